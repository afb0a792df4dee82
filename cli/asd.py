"""``featstore asd list``: the active speaker detectors and where their weights are."""

from __future__ import annotations

import json

import typer

from featstore.cli.errors import user_errors

app = typer.Typer(help="Active speaker detectors for in-the-wild videos.", no_args_is_help=True)


@app.command("list")
def list_detectors(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Name, what it needs, where the weights go and whether they are found."""
    with user_errors():
        rows = _rows()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        found = "found" if r["found"] else "NOT FOUND"
        typer.echo(f"{r['name']}\t{r['description']}\n\tweights: {r['weights']} ({found})")


def _rows() -> list[dict]:
    import importlib.util
    import os
    from pathlib import Path

    from featstore.asd.talknet.weights import DEFAULT_CHECKPOINT
    from featstore.encoders.checkpoints import CHECKPOINT_DIR_ENV, DEFAULT_CHECKPOINT_DIR

    ckpt_dir = Path(os.environ.get(CHECKPOINT_DIR_ENV, DEFAULT_CHECKPOINT_DIR)).expanduser()
    talknet = ckpt_dir / DEFAULT_CHECKPOINT
    silero = importlib.util.find_spec("silero_vad")
    return [
        {
            "name": "talknet",
            "description": "TalkNet-ASD (TalkSet), 15.0 M parameters; MFCC + 112x112 grey face crops",
            "weights": str(talknet),
            "found": talknet.is_file(),
        },
        {
            "name": "sync",
            "description": "weight-free: Silero VAD + mouth-pixel / log-filterbank agreement",
            "weights": "inside the silero-vad package (faces extra)",
            "found": silero is not None,
        },
    ]
