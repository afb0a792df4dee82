"""Entry point of the ``featstore`` command.

Sub-command groups live one per module and are imported here; each module
keeps heavy imports (zarr, xarray, torch) inside its command functions so
``featstore --help`` stays fast.
"""

from __future__ import annotations

import typer

from featstore import __version__
from featstore.cli import asd as asd_cmd
from featstore.cli import datasets as datasets_cmd
from featstore.cli import encoders as encoders_cmd
from featstore.cli import env as env_cmd
from featstore.cli import evaluate as evaluate_cmd
from featstore.cli import media as media_cmd
from featstore.cli import report as report_cmd
from featstore.cli import sample as sample_cmd
from featstore.cli import spatial as spatial_cmd
from featstore.cli import store as store_cmd
from featstore.cli import sync as sync_cmd
from featstore.cli import train as train_cmd
from featstore.cli.extract import extract_command
from featstore.cli.group import FeatstoreGroup
from featstore.cli.serve import serve_command

# Help is plain text (rich_markup_mode=None): Rich markup would eat "[@VIEW]" in
# "NAME[@VIEW][:SPLIT]", and click's plain layout shows flags as flags.
app = typer.Typer(
    name="featstore",
    help="Feature store of self-supervised embeddings for audio-visual deepfake detection.",
    cls=FeatstoreGroup,
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
for _name, _group in (
    ("store", store_cmd.app),
    ("datasets", datasets_cmd.app),
    ("encoders", encoders_cmd.app),
    ("media", media_cmd.app),
    ("sample", sample_cmd.app),
    ("train", train_cmd.app),
    ("asd", asd_cmd.app),
    ("report", report_cmd.app),
):
    app.add_typer(_group, name=_name, cls=FeatstoreGroup)
evaluate_cmd.register(app)
spatial_cmd.register(evaluate_cmd.explain_app)
sync_cmd.register(app)
app.command("extract")(extract_command)
app.command("serve")(serve_command)
app.command("env")(env_cmd.env_command)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"featstore {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    verbose: int = typer.Option(
        0,
        "--verbose",
        "-v",
        count=True,
        show_default=False,
        help="-v: featstore's debug messages; -vv: other libraries' too.",
    ),
) -> None:
    """featstore: extract once, train cheap detectors, score over HTTP."""
    configure_logging(verbose)


# The project's own loggers: -v opens these, -vv every library's.
OWN_LOGGERS = ("featstore",)  # every module of the project logs under featstore.*


def configure_logging(verbose: int) -> None:
    """Warnings only by default; ``-v``: DEBUG for the project's loggers; ``-vv``: DEBUG
    for every logger (torch, urllib3, fsspec, ...)."""
    import logging

    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose >= 1 else logging.NOTSET)


if __name__ == "__main__":  # pragma: no cover
    app()
