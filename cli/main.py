"""Entry point of the ``featstore`` command.

Sub-command groups live one per module and are imported here; each module
keeps heavy imports (zarr, xarray, torch) inside its command functions so
``featstore --help`` stays fast.
"""

from __future__ import annotations

import typer

from cli import asd as asd_cmd
from cli import datasets as datasets_cmd
from cli import encoders as encoders_cmd
from cli import env as env_cmd
from cli import evaluate as evaluate_cmd
from cli import media as media_cmd
from cli import report as report_cmd
from cli import sample as sample_cmd
from cli import spatial as spatial_cmd
from cli import store as store_cmd
from cli import sync as sync_cmd
from cli import train as train_cmd
from cli.extract import extract_command
from cli.serve import serve_command
from featstore import __version__

app = typer.Typer(
    name="featstore",
    help="Feature store of self-supervised embeddings for audio-visual deepfake detection.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)
app.add_typer(store_cmd.app, name="store")
app.add_typer(datasets_cmd.app, name="datasets")
app.add_typer(encoders_cmd.app, name="encoders")
app.add_typer(media_cmd.app, name="media")
app.add_typer(sample_cmd.app, name="sample")
app.add_typer(train_cmd.app, name="train")
app.add_typer(asd_cmd.app, name="asd")
app.add_typer(report_cmd.app, name="report")
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
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at debug level."),
) -> None:
    """featstore: extract once, train cheap detectors, score over HTTP."""
    import logging

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


if __name__ == "__main__":  # pragma: no cover
    app()
