"""``featstore explain spatial | clicks``: spatial explanations and their agreement with clicks.

Registered on the ``explain`` group beside ``explain temporal``. The clicks
evaluation (paper Fig. 4) is ``explain clicks`` rather than ``eval clicks``:
``featstore eval RUN_DIR`` is a command whose first argument is the run, so it
cannot also be a group; and the clicks score an explanation, not a detector.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from featstore.cli.errors import user_errors
from featstore.cli.group import deprecated_aliases
from featstore.cli.options import DATASET_ALIASES, ON_DATASET, dataset_name

STORE = typer.Option(
    None,
    "--store",
    "-s",
    metavar="URL",
    show_default="the store the run was trained from, else $FEATSTORE_STORE",
    help="Store location.",
)
DEVICE = typer.Option("cpu", "--device", help="Where the encoder runs (cpu, cuda, cuda:N).")
CHECKPOINT = typer.Option(
    None, "--checkpoint", show_default="the one the run records", help="The encoder's checkpoint."
)
OPTION = typer.Option(
    [],
    "--option",
    metavar="KEY=VALUE",
    help="An encoder loader option KEY=VALUE (repeatable), as for extract.",
)
MEDIA_ROOT = typer.Option(
    None, "--media-root", show_default="the root at import", help="Where the dataset's videos are."
)


def _frames(text: str) -> str | list[int]:
    if text in ("top", "all"):
        return text
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not top, all or comma-separated frame indices", param_hint="--frames"
        ) from None


@deprecated_aliases(DATASET_ALIASES)
def spatial_command(
    run_dir: Path = typer.Argument(..., help="Run directory of a probe on one visual feature."),
    store: str | None = STORE,
    on: str = ON_DATASET,
    video: list[str] = typer.Option(
        ...,
        "--video",
        metavar="ID",
        help="video_id in the manifest (repeatable; a contact sheet shows all).",
    ),
    frames: str = typer.Option(
        "top",
        "--frames",
        help="top (highest-scoring rows), all, or frame indices 0,25,50 (25 fps).",
    ),
    top_k: int = typer.Option(8, "--top-k", min=1, help="Frames for --frames top."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for the npz, json and PNG files."),
    device: str = DEVICE,
    checkpoint: str | None = CHECKPOINT,
    option: list[str] = OPTION,
    media_root: Path | None = MEDIA_ROOT,
    as_json: bool = typer.Option(False, "--json", help="Print the explanations as JSON."),
) -> None:
    """Patch-level maps of a probe's frame logits, in the original frames (paper Sec. 3.1)."""
    from featstore.cli.evaluate import _open
    from featstore.cli.extract import parse_options

    dataset = dataset_name(on)
    chosen = _frames(frames)
    options = parse_options(option)
    with user_errors():
        from featstore.trainers.spatial import explain_spatial

        result = explain_spatial(
            run_dir,
            _open(store, [run_dir]),
            dataset,
            video,
            out_dir=out,
            frames=chosen,
            top_k=top_k,
            device=device,
            checkpoint=checkpoint,
            options=options,
            media_root=media_root,
        )
    if as_json:
        typer.echo(json.dumps([e.to_dict() for e in result.videos], indent=2))
        return
    for e in result.videos:
        m = e.maps
        typer.echo(
            f"{dataset}/{e.video_id}: score {e.score:+.3f}, {len(m.frames)} frames, "
            f"{m.method} on {m.target} ({m.grid_hw[0]}x{m.grid_hw[1]} grid)"
        )
        for f, z, p in zip(m.frames, m.logits, m.peaks, strict=True):
            typer.echo(f"  frame {int(f):5d}  logit {z:+.3f}  peak x {p[0]:.3f} y {p[1]:.3f}")
    typer.echo(f"{len(result.files)} files written to {out}")


def clicks_command(
    run_dir: Path = typer.Argument(..., help="Run directory of a probe on one visual feature."),
    store: str | None = STORE,
    on: str = typer.Option(
        "exddv:test", "--on", help="Videos with clicks: NAME[@VIEW][:SPLIT] (ExDDV's manifest)."
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", show_default="RUN_DIR/clicks-NAME-SPLIT", help="Output directory."
    ),
    predictions: list[Path] = typer.Option(
        [],
        "--predictions",
        metavar="CSV",
        help="CSV of video_id,frame,x,y: an extra baseline (repeatable).",
    ),
    coords: str = typer.Option(
        "frame", "--coords", help="Clicks relative to the frame, or to ExDDV's tool (exddv-tool)."
    ),
    click_fps: float | None = typer.Option(
        None,
        "--click-fps",
        show_default="each file's",
        help="Frame rate of the click frame indices.",
    ),
    thresholds: str | None = typer.Option(
        None,
        "--thresholds",
        show_default="0..0.95",
        help="Minimum scores of the curve, e.g. 0,0.5,0.9.",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the random-position baseline."),
    track_faces: bool = typer.Option(
        False, "--track-faces", help="Track faces of videos without cached tracks (face centre)."
    ),
    grid: int = typer.Option(8, "--grid", min=0, help="Videos in the qualitative grid."),
    device: str = DEVICE,
    checkpoint: str | None = CHECKPOINT,
    option: list[str] = OPTION,
    media_root: Path | None = MEDIA_ROOT,
    allow_missing: bool = typer.Option(
        False, "--allow-missing", help="Skip videos without features."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """MAE between human clicks and the explanation's maximum, beside baselines (paper Fig. 4)."""
    from featstore.cli.evaluate import _open
    from featstore.cli.extract import parse_options

    options = parse_options(option)
    taus = None
    if thresholds is not None:
        try:
            taus = [float(x) for x in thresholds.split(",") if x.strip()]
        except ValueError:
            raise typer.BadParameter(
                f"{thresholds!r} is not numbers", param_hint="--thresholds"
            ) from None
    with user_errors():
        from featstore.trainers.clicks import DEFAULT_THRESHOLDS
        from featstore.trainers.clicks_eval import evaluate_clicks
        from featstore.trainers.data import Selection

        sel = Selection.parse(on, default_split="test")
        out_dir = out or run_dir / f"clicks-{sel.dataset}-{sel.split or 'all'}"
        result = evaluate_clicks(
            run_dir,
            _open(store, [run_dir]),
            sel,
            out_dir=out_dir,
            predictions=predictions,
            thresholds=taus or DEFAULT_THRESHOLDS,
            coords=coords,
            click_fps=click_fps,
            seed=seed,
            track_faces=track_faces,
            grid_videos=grid,
            device=device,
            checkpoint=checkpoint,
            options=options,
            media_root=media_root,
            allow_missing=allow_missing,
        )
    s = result.summary
    if as_json:
        typer.echo(json.dumps(s, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"{s['run']} on {s['selection']}: {s['n_videos']} fake videos, {s['n_clicks']} clicks"
    )
    table.add_column("method")
    table.add_column("MAE", justify="right")
    table.add_column("videos", justify="right")
    for method, mae in s["mae"].items():
        table.add_row(
            method, "-" if mae is None else f"{mae:.3f}", str(s["n_videos_per_method"][method])
        )
    Console(width=132).print(table)
    if s["n_clicks_dropped"]:
        typer.echo(f"{s['n_clicks_dropped']} clicks fell on frames without a row and were left out")
    typer.echo(f"written to {out_dir}")


def register(explain_app: typer.Typer) -> None:
    """Add ``spatial`` and ``clicks`` to the ``explain`` group."""
    explain_app.command("spatial")(spatial_command)
    explain_app.command("clicks")(clicks_command)
