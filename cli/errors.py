"""Map library errors to one-line messages and exit codes.

Exit codes of ``featstore`` (README "Exit codes"):

- 0: done;
- 1: an error a user can cause (bad input, missing store, unknown dataset, ...),
  printed as one ``error: ...`` line;
- 2: the command line itself does not parse (an unknown option or command, a
  missing or ill-typed value, an unknown encoder name, two options that
  contradict each other), also printed as one ``error: ...`` line
  (:class:`featstore.cli.group.FeatstoreGroup`); a group given no command prints its help;
- 3: ``extract --fail-on-error`` finished but some videos failed;
- 130: interrupted (Ctrl-C); 143: ``featstore train`` stopped by SIGTERM (both save
  the best-so-far run first, ``featstore.cli.train``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import NoReturn

import typer

from featstore.errors import FeatstoreError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_VIDEOS_FAILED = 3
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # SIGTERM: `featstore train` saves its best-so-far run first


def fail(message: str, *, code: int = EXIT_ERROR) -> NoReturn:
    """Print ``error: <message>`` on stderr and exit with ``code``."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code=code)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn a ``FeatstoreError`` into ``error: <message>`` on stderr and exit 1."""
    try:
        yield
    except FeatstoreError as exc:
        message = exc.args[0] if exc.args else type(exc).__name__
        fail(str(message), code=exc.exit_code)
