"""``featstore report table6 | fig2 | fig3``: the paper's tables and figures, one command each.

Tab. 2/4 (the train/test grid) come from ``featstore grid``. Heavy imports stay
inside the commands so ``featstore --help`` does not load them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from featstore.cli.errors import user_errors
from featstore.cli.group import deprecated_aliases
from featstore.cli.options import (
    DATASET_ALIASES,
    ON_DATASET,
    dataset_name,
    fakes_option,
    plot_file,
    plot_format_option,
    store_option,
)
from featstore.cli.output import json_option, print_json

app = typer.Typer(
    help="The paper's tables and figures: Tab. 6, Fig. 2, Fig. 3.", no_args_is_help=True
)

STORE = store_option()
CAPTION = typer.Option(
    True, "--caption/--no-caption", help="Print the caption (n, filter) under the figure."
)
WIDTH = typer.Option(3.3, "--width", help="Figure width in inches (3.3: one paper column).")


def _store(url: str) -> Any:
    from featstore import open_store

    return open_store(url, mode="r")


@app.command("table6")
@deprecated_aliases({"--all-fakes": "--fakes=all"})
def table6_command(
    store: str = STORE,
    audio: str = typer.Option(..., "--audio", help="Audio feature ENCODER[:LAYER]."),
    visual: str = typer.Option(..., "--visual", help="Visual feature ENCODER[:LAYER]."),
    on: list[str] = typer.Option(
        ...,
        "--on",
        metavar="NAME[:SPLIT]",
        help="Test set NAME[:SPLIT] (bare NAME = its test split); repeat per column.",
    ),
    shifts: str = typer.Option(
        "0,15", "--shifts", help="Shift windows D (frames), comma-separated."
    ),
    pools: str = typer.Option(
        "mean,max,logsumexp,p97,min,p3", "--pools", help="Pools, comma-separated (paper order)."
    ),
    padding: str | None = typer.Option(
        None,
        "--padding",
        show_default="zero for the mean pool, as SpeechForensics; exclude for the others",
        help="zero or exclude for every pool.",
    ),
    frame_hz: float | None = typer.Option(
        None, "--frame-hz", help="Resample both streams to this rate (when the rates differ)."
    ),
    fakes: str = fakes_option(),
    allow_missing: bool = typer.Option(
        False, "--allow-missing", help="Skip videos without both features."
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Directory for table6_{auc,ap}.{md,csv,json}."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print every cell as JSON."),
) -> None:
    """Paper Tab. 6: Eq. 3 over shifts x pools x test sets (AUC and AP)."""
    with user_errors():
        from featstore.trainers.sync_table import sync_table
        from featstore.trainers.syncfree import SyncError

        try:
            shift_list = [int(x) for x in shifts.split(",") if x.strip()]
        except ValueError:
            raise SyncError(
                f"--shifts must be integers separated by commas, got {shifts!r}"
            ) from None
        pool_list = [x.strip() for x in pools.split(",") if x.strip()]

        def show(selection: str, n: int) -> None:
            if not as_json:
                typer.echo(f"scoring {selection} ({n} videos)")

        result = sync_table(
            _store(store),
            on,
            audio,
            visual,
            shifts=shift_list,
            pools=pool_list,
            padding=padding,
            frame_hz=frame_hz,
            fakes=fakes,
            allow_missing=allow_missing,
            on_selection=show,
        )
        files = result.write(out) if out is not None else {}
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    from featstore.cli.evaluate import filter_text

    typer.echo(filter_text(result.settings["fakes"]))
    for metric in ("auc", "ap"):
        typer.echo("")
        typer.echo(result.table(metric).to_markdown(bold_best=True), nl=False)
    for name, path in files.items():
        typer.echo(f"{name}: {path}")


@app.command("fig2")
def fig2_command(
    runs: list[Path] = typer.Argument(..., help="Run directories evaluated on --on."),
    on: str = typer.Option(
        ..., "--on", help="The test set whose stored metrics to plot: NAME[:SPLIT]."
    ),
    label: list[str] | None = typer.Option(
        None,
        "--label",
        metavar="TEXT",
        show_default="the run directory names",
        help="Bar label per run, in order.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Figure file: .png, .pdf or .svg."),
    plot_format: str | None = plot_format_option(),
    width: float = WIDTH,
    caption: bool = CAPTION,
    fakes: str = fakes_option(
        help="Which stored results to plot: those of `eval --fakes paper` (reals and the fakes "
        "with both modalities manipulated, where the dataset says which) or `--fakes all`."
    ),
    as_json: bool = json_option("the bars, the caption and the files written"),
) -> None:
    """Paper Fig. 2: temporal localization AUC (solid) beside video AUC (hatched) per run."""
    out = plot_file(out, plot_format)
    with user_errors():
        from dataclasses import asdict

        from featstore.trainers.data import Selection
        from featstore.trainers.figures import (
            localization_bars,
            localization_caption,
            localization_figure,
            write_json,
        )

        selection = str(Selection.parse(on, default_split="test"))
        bars = localization_bars(runs, selection, labels=label or None, fakes=fakes)
        path = localization_figure(bars, out, selection=selection, width_in=width, caption=caption)
        text = localization_caption(bars, selection)
        data = write_json(
            path,
            {
                "selection": selection,
                "fakes": fakes,
                "caption": text,
                "bars": [asdict(b) for b in bars],
            },
        )
    if as_json:
        print_json(
            {
                "selection": selection,
                "fakes": fakes,
                "caption": text,
                "bars": bars,
                "figure": path,
                "data": data,
            }
        )
        return
    for b in bars:
        typer.echo(
            f"{b.label:<24} {b.modality:<12} localization {100 * b.temporal_auc:5.1f}  "
            f"AUC {100 * b.auc:5.1f}"
        )
    typer.echo(text)
    typer.echo(f"figure: {path}\ndata: {data}")


@app.command("fig3")
@deprecated_aliases(DATASET_ALIASES)
def fig3_command(
    run: Path = typer.Argument(..., help="Run directory with per-frame scores."),
    store: str | None = typer.Option(
        None,
        "--store",
        "-s",
        metavar="URL",
        show_default="the store the run records, else $FEATSTORE_STORE",
        help="Store location.",
    ),
    on: str = ON_DATASET,
    video: str = typer.Option(..., "--video", help="video_id in the dataset's manifest."),
    at: str | None = typer.Option(
        None,
        "--at",
        show_default="the highest- and lowest-scoring frames and the middle one",
        help="Times (s) of the frames to show, comma-separated.",
    ),
    threshold: float = typer.Option(0.0, "--threshold", help="Decision threshold on the score."),
    out: Path = typer.Option(..., "--out", "-o", help="Figure file: .png, .pdf or .svg."),
    plot_format: str | None = plot_format_option(),
    width: float = WIDTH,
    caption: bool = CAPTION,
    as_json: bool = json_option("the caption and the files written"),
) -> None:
    """Paper Fig. 3: a video's score curve, its Mel spectrogram and frames under it."""
    dataset = dataset_name(on)
    out = plot_file(out, plot_format)
    with user_errors():
        from featstore.cli.evaluate import open_run_store
        from featstore.trainers.figures import FigureError, write_json
        from featstore.trainers.video_figure import score_figure, video_caption, video_figure_data

        try:
            times = None if at is None else [float(x) for x in at.split(",") if x.strip()]
        except ValueError:
            raise FigureError(f"--at must be seconds separated by commas, got {at!r}") from None
        data = video_figure_data(
            run, open_run_store(store, [run]), dataset, video, at_s=times, threshold=threshold
        )
        path = score_figure(data, out, width_in=width, caption=caption)
        sidecar = write_json(path, {"caption": video_caption(data), **data.to_dict()})
    if as_json:
        print_json({"caption": video_caption(data), "figure": path, "data": sidecar})
        return
    typer.echo(video_caption(data))
    typer.echo(f"figure: {path}\ndata: {sidecar}")
