"""``featstore sample``: write the bundled synthetic sample dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from featstore.cli.errors import user_errors
from featstore.cli.group import deprecated_aliases

app = typer.Typer(
    help="Synthetic talking-face sample dataset (AV-Deepfake1M format).", no_args_is_help=True
)


@app.callback()
def main() -> None:
    """Synthetic talking-face sample dataset (AV-Deepfake1M format)."""


@app.command("make")
@deprecated_aliases({"-n": "--clips"})
def make(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the clips and metadata into.")],
    clips: Annotated[int, typer.Option("--clips", help="Number of clips (about half real).")] = 40,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same files.")] = 0,
    size: Annotated[int, typer.Option(help="Frame width and height in pixels (even).")] = 224,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a sample dataset already in OUT_DIR.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print what was written as JSON.")
    ] = False,
) -> None:
    """Write synthetic real and fake clips with train/val metadata to OUT_DIR."""
    from featstore.sample import make_sample

    with user_errors():
        info = make_sample(out_dir, n_clips=clips, seed=seed, size=size, overwrite=overwrite)
    if as_json:
        from featstore.cli.output import print_json

        print_json(info)
        return
    typer.echo(
        f"wrote {info.n_clips} clips ({info.n_train} train, {info.n_val} val) to {info.root} "
        f"in {info.elapsed_s:.1f} s"
    )
    for modify_type, count in info.counts.items():
        typer.echo(f"  {modify_type:<16} {count}")
    typer.echo(f"  total duration   {info.total_duration_s:.1f} s")
    typer.echo(f"  codecs           {info.video_codec} + {info.audio_codec}, 25 fps, 16 kHz mono")
    typer.echo(f"metadata: {info.train_metadata}")
    typer.echo(f"          {info.val_metadata}")
