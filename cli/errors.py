"""Map library errors to one-line messages and exit codes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer

from featstore.errors import FeatstoreError


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn a ``FeatstoreError`` into ``error: <message>`` on stderr and exit 1."""
    try:
        yield
    except FeatstoreError as exc:
        message = exc.args[0] if exc.args else type(exc).__name__
        typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=exc.exit_code) from None
