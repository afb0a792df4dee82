"""``featstore media``: inspect media files the way the extraction worker decodes them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from featstore.cli.errors import user_errors

app = typer.Typer(help="Inspect media files (containers, streams, rates).", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Inspect media files (containers, streams, rates)."""


def _fmt(value: object, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") + unit
    return f"{value}{unit}"


@app.command()
def probe(
    file: Annotated[Path, typer.Argument(help="Video or audio file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show container format, duration and the video and audio streams of FILE (no decoding)."""
    from featstore.media import probe as probe_media

    with user_errors():
        info = probe_media(file)
    if as_json:
        typer.echo(json.dumps(info.to_dict(), indent=2))
        return

    from rich.console import Console
    from rich.table import Table

    table = Table(title=str(file), show_header=True)
    table.add_column("field")
    table.add_column("value")
    table.add_row("format", info.format)
    table.add_row("size", f"{info.size_bytes:,} B")
    table.add_row("duration", _fmt(info.duration_s, " s"))
    if info.video is None:
        table.add_row("video", "none")
    else:
        v = info.video
        table.add_row("video codec", v.codec)
        table.add_row("video size", f"{v.width}x{v.height}")
        table.add_row("video fps (average)", _fmt(v.fps))
        table.add_row("video frames (est.)", _fmt(v.n_frames))
        table.add_row("video duration", _fmt(v.duration_s, " s"))
        table.add_row("video start", _fmt(v.start_s, " s"))
    if info.audio is None:
        table.add_row("audio", "none")
    else:
        a = info.audio
        table.add_row("audio codec", a.codec)
        table.add_row("audio rate", f"{a.sample_rate_hz} Hz")
        table.add_row("audio channels", str(a.channels))
        table.add_row("audio duration", _fmt(a.duration_s, " s"))
        table.add_row("audio start", _fmt(a.start_s, " s"))
    Console().print(table)
