"""The command groups' class: usage errors as one line, deprecated spellings that warn.

Every group of ``featstore`` (the root and ``store``, ``datasets``, ...) is a
:class:`FeatstoreGroup`:

- **Usage errors** (an unknown option or command, a missing or ill-typed
  value) print one line, ``error: <message> (see 'featstore CMD --help')``, on
  stderr and exit with :data:`featstore.cli.errors.EXIT_USAGE` (2), instead of click's
  usage block and error box. A group run without a command prints its help
  and exits 2 as well.
- **Deprecated spellings**: a command declares the old names of its options
  with :func:`deprecated_aliases`; the group rewrites them to the current name
  before the command parses its arguments and warns once per spelling on
  stderr. The old names are not in ``--help`` and never count as a second
  meaning of a short letter (the letters' table is in the README, "Options").

Typer carries its own copy of click: the exceptions are typer's, never the
click package's.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import typer
from typer._click.exceptions import ClickException, NoArgsIsHelpError
from typer.core import TyperGroup
from typer.exceptions import Abort

from featstore.cli.errors import EXIT_ERROR, EXIT_USAGE

__all__ = ["ALIASES_ATTR", "FeatstoreGroup", "deprecated_aliases", "rewrite_aliases"]

ALIASES_ATTR = "__featstore_deprecated_aliases__"
F = TypeVar("F", bound=Callable[..., Any])


def deprecated_aliases(aliases: Mapping[str, str]) -> Callable[[F], F]:
    """Declare a command's old option spellings: ``{"-n": "--name"}``.

    >>> @deprecated_aliases({"--dataset": "--on"})
    ... def command(on: str) -> None: ...
    """

    def mark(fn: F) -> F:
        setattr(fn, ALIASES_ATTR, dict(aliases))
        return fn

    return mark


def _takes_value(command: Any) -> set[str]:
    """The command's option names that consume the next argument."""
    names: set[str] = set()
    for param in command.params:
        if param.param_type_name != "option":
            continue
        if getattr(param, "is_flag", False) or getattr(param, "count", False):
            continue
        names.update(param.opts)
        names.update(param.secondary_opts)
    return names


def rewrite_aliases(
    command: Any, args: Sequence[str], aliases: Mapping[str, str], *, warn: Callable[[str], None]
) -> list[str]:
    """``args`` with each deprecated spelling replaced by the current one (``warn`` is
    called once per spelling used). Values of options are never rewritten, nor
    anything after ``--``."""
    takes_value = _takes_value(command)
    out: list[str] = []
    warned: set[str] = set()
    i = 0
    while i < len(args):
        token = args[i]
        if token == "--":
            out.extend(args[i:])
            break
        name, eq, value = token.partition("=") if token.startswith("--") else (token, "", "")
        if (
            name not in aliases
            and not token.startswith("--")
            and token[:2] in aliases
            and len(token) > 2
        ):
            name, eq, value = token[:2], "=", token[2:]  # -n5: a short option glued to its value
        if name in aliases:
            new = aliases[name]
            if name not in warned:
                warned.add(name)
                warn(f"{name} is deprecated here and will be removed: use {new}")
            name = new
            token = f"{new}{eq}{value}" if eq else new
        out.append(token)
        if name in takes_value and not eq and i + 1 < len(args):
            out.append(args[i + 1])  # the option's value, whatever it looks like
            i += 1
        i += 1
    return out


def _one_line(text: str) -> str:
    text = " ".join(str(text).split())
    if len(text) > 1 and text[0].isupper() and text[1].islower():
        text = text[0].lower() + text[1:]  # click's "No such option" -> "no such option"
    return text.rstrip(".")


def _warn(message: str) -> None:
    typer.secho(f"warning: {message}", err=True, fg=typer.colors.YELLOW)


class FeatstoreGroup(TyperGroup):
    """A typer group with one-line usage errors and deprecated option spellings."""

    def resolve_command(self, ctx: Any, args: list[str]) -> tuple[Any, Any, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        aliases = getattr(getattr(command, "callback", None), ALIASES_ATTR, None)
        if aliases and not ctx.resilient_parsing:
            rest = rewrite_aliases(command, rest, aliases, warn=_warn)
        return name, command, rest

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except NoArgsIsHelpError as exc:
            exc.show()  # the group's help, on stderr
            sys.exit(EXIT_USAGE)
        except ClickException as exc:
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            typer.secho(f"error: {_one_line(exc.format_message())}{hint}", err=True, fg="red")
            sys.exit(exc.exit_code)
        except Abort:
            typer.secho("error: aborted", err=True, fg="red")
            sys.exit(EXIT_ERROR)
        sys.exit(rv if isinstance(rv, int) else 0)
