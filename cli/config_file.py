"""``--config FILE``: a command's options from a TOML or YAML file, the command line on top.

The file's keys are the command's option names, with or without the leading
dashes and with ``-`` or ``_`` (``batch-videos`` or ``batch_videos``);
values have the option's type (a list for repeatable options, where one
value is also accepted; ``true``/``false`` for flags). Relative paths (``out``,
``resume``, ``tensorboard``, a local ``store``) are taken from the file's folder, as the
grid's TOML file does (``featstore.trainers.grid``). An unknown key is an error naming
the allowed ones.

Precedence, highest first: the command line, the file, the environment
(``FEATSTORE_STORE`` for ``--store``), the option's default. The file's
values become click's ``default_map`` (so the command line wins and required
options count as given); ``featstore.cli.options`` lets the file's store beat
``FEATSTORE_STORE``. :func:`invocation` says where each value came from;
``featstore train`` records it in the run's ``config.json`` (``invocation``).
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer

from featstore.cli.errors import fail

META_KEY = "featstore.config_file"
_NOT_FROM_FILES = {"config", "config_file", "help"}
PATH_OPTIONS = (
    "out",
    "resume",
    "tensorboard",
    "store",
)  # relative values are from the file's folder
# click's ParameterSource names (typer's copy of click has its own enum: compare names)
_SOURCES = {
    "COMMANDLINE": "command_line",
    "DEFAULT_MAP": "config_file",
    "ENVIRONMENT": "environment",
}

__all__ = ["META_KEY", "config_option", "invocation", "read_config"]


def read_config(path: Path) -> dict[str, Any]:
    """A TOML (``.toml``) or YAML (``.yaml``/``.yml``) file's top-level table."""
    suffix = path.suffix.lower()
    try:
        text = path.read_text()
    except FileNotFoundError:
        fail(f"no config file at {path}")
    except OSError as exc:
        fail(f"cannot read the config file {path}: {exc}")
    if suffix == ".toml":
        try:
            doc: Any = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            fail(f"{path} is not valid TOML: {exc}")
    elif suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            fail(f"{path}: YAML config files need PyYAML (pip install pyyaml); or use TOML")
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            fail(f"{path} is not valid YAML: {exc}")
        doc = {} if doc is None else doc
    else:
        fail(f"config files are .toml, .yaml or .yml; got {path}")
    if not isinstance(doc, dict):
        fail(f"{path} must hold a table of option names and values")
    return doc


def _options(command: Any) -> dict[str, Any]:
    """Every spelling of each option's name -> the option (typer's own parameters)."""
    out: dict[str, Any] = {}
    for param in command.params:
        if param.param_type_name != "option" or param.name in _NOT_FROM_FILES:
            continue
        names = {param.name or "", *(o.lstrip("-") for o in param.opts if o.startswith("--"))}
        for name in names:
            if name:
                out[name] = out[name.replace("-", "_")] = out[name.replace("_", "-")] = param
    return out


def _resolve(value: str, base: Path) -> str:
    """A relative local path from the config file's folder (URLs and absolute paths kept)."""
    if "://" in value or Path(value).expanduser().is_absolute():
        return value
    return str(base / value)


def _value(param: Any, key: str, value: Any, base: Path, path: Path, paths: Sequence[str]) -> Any:
    if param.multiple:
        value = list(value) if isinstance(value, list | tuple) else [value]
    elif isinstance(value, list | tuple | dict):
        fail(f"{path}: {key} takes one value, got {value!r}")
    if getattr(param, "is_flag", False) and not isinstance(value, bool):
        fail(f"{path}: {key} is a flag: give true or false, got {value!r}")
    if param.name in paths and value is not None:
        if param.multiple:
            return [_resolve(str(v), base) for v in value]
        return _resolve(str(value), base)
    return value


def _load_into(ctx: typer.Context, value: Path | None, paths: Sequence[str]) -> Path | None:
    if value is None or ctx.resilient_parsing:
        return value
    path = Path(value).expanduser()
    doc = read_config(path)
    options = _options(ctx.command)
    base = path.resolve().parent
    defaults: dict[str, Any] = {}
    for key, item in doc.items():
        name = str(key).lstrip("-")
        option = options.get(name)
        if option is None:
            allowed = sorted({o.name for o in options.values() if o.name})
            fail(f"{path}: unknown key {key!r} (the options of this command: {', '.join(allowed)})")
        if option.name in defaults:
            fail(f"{path}: {key!r} sets {option.name} a second time")
        defaults[option.name] = _value(option, str(key), item, base, path, paths)
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    ctx.meta[META_KEY] = {
        "path": str(path.resolve()),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "values": dict(defaults),
    }
    return value


def config_option(*, paths: Sequence[str] = PATH_OPTIONS) -> Any:
    """``--config FILE`` (TOML or YAML): option values from a file; the command line wins.

    ``paths``: the options whose relative values are taken from the file's folder.
    """

    def load(ctx: typer.Context, value: Path | None) -> Path | None:
        return _load_into(ctx, value, paths)

    return typer.Option(
        None,
        "--config",
        metavar="FILE",
        is_eager=True,
        callback=load,
        help="Read options from a TOML or YAML file (keys: the option names); options "
        "given on the command line win.",
    )


def invocation(ctx: typer.Context) -> dict[str, Any]:
    """Where the command's options came from: the config file (path, sha256, values) and
    the names set on the command line (overriding the file where both set one) or from
    the environment."""
    sources: dict[str, list[str]] = {"command_line": [], "config_file": [], "environment": []}
    for param in ctx.command.params:
        if param.name is None or param.name in _NOT_FROM_FILES:
            continue
        source = getattr(ctx.get_parameter_source(param.name), "name", "")
        key = _SOURCES.get(source)
        if key is not None:
            sources[key].append(param.name)
    meta = ctx.meta.get(META_KEY)
    file_values = meta["values"] if meta else {}
    return {
        "command": ctx.command_path,
        "config_file": meta,
        "from_command_line": sorted(sources["command_line"]),
        "from_config_file": sorted(sources["config_file"]),
        "from_environment": sorted(sources["environment"]),
        "overridden": sorted(n for n in sources["command_line"] if n in file_values),
    }
