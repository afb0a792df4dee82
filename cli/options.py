"""Options many commands share, declared once: the store, the plot format, the filter.

**The store.** Every command that reads or writes a store takes it as
``--store URL`` (or, for ``featstore store ...``, as the positional ``URL``);
left out, it comes from the environment variable ``FEATSTORE_STORE``, as
Hugging Face tools take their cache from ``HF_HOME``. An explicit value always
wins. Commands that score a run (``eval``, ``fuse``, ...) default to the store
the run recorded, and fall back to ``FEATSTORE_STORE`` only when the run names
none (:func:`fallback_store`). With neither, the error names both ways.

**The plot format.** Commands that write plots take ``--format png|pdf|svg``.
A command that writes into a directory uses it as the files' suffix
(default png); one that writes a file named by ``--out`` takes the format
from that file's suffix, and ``--format`` then must agree with it (or adds the
suffix when the name has none): :func:`plot_file`.

**The evaluation filter.** Every command that computes a metric takes
``--fakes paper|all`` (:func:`fakes_option`): ``paper`` (the default) counts
reals and the fakes with both modalities manipulated where the dataset says
which, ``all`` every fake.

Only typer and the standard library are imported here (the filter's check is
imported when a command runs), so every command module can use it without
slowing ``featstore --help``. (Typer carries its own copy of click: contexts and parameters are typer's, never the click package's.)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer

from featstore.cli.errors import fail

STORE_ENV = "FEATSTORE_STORE"
PLOT_FORMATS = ("png", "pdf", "svg")

__all__ = [
    "DATASET_ALIASES",
    "ON_DATASET",
    "PLOT_FORMATS",
    "STORE_ENV",
    "complete_features",
    "dataset_name",
    "env_store",
    "fakes_option",
    "fallback_store",
    "plot_file",
    "plot_format_option",
    "plot_suffix",
    "shift_store",
    "store_option",
]


def env_store() -> str | None:
    """``$FEATSTORE_STORE`` when set and not blank."""
    value = os.environ.get(STORE_ENV, "").strip()
    return value or None


def _no_store(how: str) -> str:
    return f"no store given: pass {how} or set the environment variable {STORE_ENV}"


def _require_store(ctx: typer.Context, param: typer.CallbackParam, value: str | None) -> str | None:
    """Click callback: the value (from the command line, else a ``--config`` file, else
    ``$FEATSTORE_STORE``) or an error."""
    if ctx.resilient_parsing:  # shell completion: never fail
        return value
    name = param.name or ""
    from_file = (ctx.default_map or {}).get(name)
    source = ctx.get_parameter_source(name)
    if from_file and source is not None and source.name == "ENVIRONMENT":
        # click ranks the environment above default_map; a config file is the more explicit
        value = from_file
        ctx.set_parameter_source(name, type(source).DEFAULT_MAP)
    if value is None or not str(value).strip():
        fail(_no_store("--store URL"))
    return str(value).strip()


def store_option(help: str = "Store location: a local path or an fsspec URL (s3://...).") -> Any:
    """``--store/-s URL``, required, defaulting to ``$FEATSTORE_STORE``."""
    return typer.Option(
        None,
        "--store",
        "-s",
        envvar=STORE_ENV,
        show_envvar=True,
        callback=_require_store,
        metavar="URL",
        help=help,
    )


def fallback_store(recorded: str | None, *, what: str) -> str:
    """The store a run recorded, else ``$FEATSTORE_STORE``, else an error naming both.

    For commands whose ``--store`` defaults to the run's own store (an explicit
    ``--store`` is handled before this is called).
    """
    if recorded:
        return recorded
    found = env_store()
    if found:
        return found
    fail(f"{what} does not record its store; " + _no_store("--store URL"))


def _looks_like_store(text: str) -> bool:
    """A URL, a path with a separator, or something on disk: never a dataset name
    (those are ``[A-Za-z0-9][A-Za-z0-9._+-]*``)."""
    return "://" in text or "/" in text or os.sep in text or Path(text).expanduser().exists()


def shift_store(
    url: str | None, rest: Sequence[str | None], *, names: Sequence[str], required: int
) -> tuple[str, list[str | None]]:
    """The store and the other positionals of a ``featstore store`` command.

    Click fills positionals left to right, so when the ``URL`` is left out
    (``$FEATSTORE_STORE`` set) the first value lands in ``url``. The first value
    is the store when every positional is given, or when it looks like a store
    (a URL, a path, something on disk), or when ``$FEATSTORE_STORE`` is unset;
    otherwise the values shift right by one and the store comes from the
    environment. ``names``: the other positionals' names, ``required`` of them
    needed.
    """
    values = [url, *rest]
    given = sum(v is not None for v in values)
    env = env_store()
    shift = (
        env is not None
        and url is not None
        and given < len(values)
        and (given <= required or not _looks_like_store(url))
    )
    if shift:
        store, others = env, values[:-1]
    else:
        store, others = url or env, values[1:]
    if store is None:
        fail(_no_store("URL"))
    for name, value in zip(names[:required], others[:required], strict=True):
        if value is None:
            fail(f"missing argument {name}")
    return store, others


# ------------------------------------------------------------------ the videos a command reads

# ``--on`` names the videos a command works on, everywhere: ``NAME[@VIEW][:SPLIT]``.
# Commands about stored videos picked one by one (``--video ID``) take the dataset
# alone; ``--dataset``/``-d`` were their old spelling (deprecated, still accepted).
DATASET_ALIASES = {"--dataset": "--on", "-d": "--on"}
ON_DATASET = typer.Option(
    ...,
    "--on",
    metavar="NAME",
    help="Dataset of the stored video(s) (--video picks them).",
)


def dataset_name(on: str) -> str:
    """``--on NAME`` of a command whose ``--video`` picks the videos: a bare dataset name."""
    name = on.strip()
    if not name or any(c in name for c in "@:/"):
        raise typer.BadParameter(
            f"{on!r}: give the dataset NAME alone (--video picks the videos)", param_hint="--on"
        )
    return name


# ------------------------------------------------------------------ completion


def complete_features(incomplete: str) -> list[str]:
    """Shell completion of ``ENCODER[:LAYER][+ENCODER...]``: registered encoder names
    for the member being typed (the registry is cheap: no model is loaded)."""
    from featstore.encoders import specs

    done, _, member = incomplete.rpartition("+")
    if ":" in member:
        return []
    prefix = f"{done}+" if done else ""
    return [prefix + name for name in specs() if name.startswith(member)]


# ------------------------------------------------------------------ plot format


def _check_format(value: str | None) -> str | None:
    if value is None:
        return None
    fmt = value.lower().lstrip(".")
    if fmt not in PLOT_FORMATS:
        fail(f"--format must be one of {', '.join(PLOT_FORMATS)}, got {value!r}")
    return fmt


def _complete_format(incomplete: str) -> list[str]:
    return [f for f in PLOT_FORMATS if f.startswith(incomplete)]


def plot_format_option() -> Any:
    """``--format png|pdf|svg`` (None when not given)."""
    return typer.Option(
        None,
        "--format",
        metavar="png|pdf|svg",
        autocompletion=_complete_format,
        show_default="the --out file's suffix, else png",
        help="Plot file format.",
    )


def plot_suffix(fmt: str | None) -> str:
    """The suffix of plots written into a directory: ``fmt`` or ``png``."""
    return _check_format(fmt) or "png"


def plot_file(out: Path, fmt: str | None) -> Path:
    """The file a plot goes to: ``out``, its suffix checked against ``--format``."""
    fmt = _check_format(fmt)
    suffix = out.suffix.lower().lstrip(".")
    if not suffix:
        return out.with_name(f"{out.name}.{fmt or 'png'}")
    if suffix not in PLOT_FORMATS:
        fail(f"plots are written as {', '.join(PLOT_FORMATS)}; {str(out)!r} ends in .{suffix}")
    if fmt is not None and fmt != suffix:
        fail(f"--format {fmt} disagrees with the suffix of {str(out)!r}")
    return out


# --------------------------------------------------------- evaluation filter


def _check_fakes(value: str | None) -> str | None:
    from featstore.trainers.evaluation_filter import FilterError, check_fakes

    if value is None:
        return None
    try:
        return check_fakes(value)
    except FilterError as exc:
        fail(str(exc))


def _complete_fakes(incomplete: str) -> list[str]:
    return [f for f in ("paper", "all") if f.startswith(incomplete)]


FAKES_HELP = (
    "Which videos count: paper (reals and the fakes with both modalities manipulated, where "
    "the dataset says which, as the paper evaluates) or all (every fake)."
)


def fakes_option(
    default: str | None = "paper", help: str = FAKES_HELP, show_default: bool | str = True
) -> Any:
    """``--fakes paper|all``: the evaluation filter, one name and one meaning on every
    command that computes a metric (``featstore.trainers.evaluation_filter`` decides it)."""
    return typer.Option(
        default,
        "--fakes",
        metavar="paper|all",
        callback=_check_fakes,
        autocompletion=_complete_fakes,
        show_default=show_default,
        help=help,
    )
