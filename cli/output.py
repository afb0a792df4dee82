"""``--json``: every command that prints results prints them as one JSON document.

The document goes to stdout alone (progress, warnings and errors go to
stderr), so ``featstore CMD --json | jq`` always parses. Its shape per command
is documented in the README ("JSON output") and kept stable: keys are added,
never renamed or removed, without a deprecation.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import typer

__all__ = ["json_option", "jsonable", "print_json"]


def json_option(what: str = "the results") -> Any:
    """``--json``: print ``what`` as one JSON document on stdout."""
    return typer.Option(False, "--json", help=f"Print {what} as JSON.")


def jsonable(value: Any) -> Any:
    """``value`` with numpy arrays and scalars, paths, dataclasses and NaN made JSON-ready."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy arrays and scalars
        return jsonable(value.tolist())
    if isinstance(value, str | int | bool) or value is None:
        return value
    return str(value)


def print_json(doc: Any) -> None:
    """``doc`` as indented JSON on stdout (NaN as null: strict JSON parsers refuse NaN)."""
    typer.echo(json.dumps(jsonable(doc), indent=2, allow_nan=False))
