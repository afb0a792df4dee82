"""``featstore syncscore | layers``: training-free audio-visual synchronisation (paper Eq. 3).

Registered on the top-level app by ``register(app)``; heavy imports stay
inside the commands so ``featstore --help`` does not load them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from featstore.cli.errors import user_errors
from featstore.cli.evaluate import (
    CALIBRATE_ON,
    CLUSTER,
    FAKES,
    N_WORKERS,
    NO_CALIBRATION,
    SEGMENT_METRICS,
    THRESHOLD,
    calibrate_on,
    filter_text,
    localization_rows,
    result_table,
    show_progress,
)
from featstore.cli.group import deprecated_aliases
from featstore.cli.options import complete_features, plot_format_option, plot_suffix, store_option
from featstore.cli.output import json_option, print_json

STORE = store_option()
AUDIO = typer.Option(
    ...,
    "--audio",
    metavar="ENCODER[:LAYER]",
    autocompletion=complete_features,
    help="Audio features ENCODER[:LAYER] (e.g. avhubert-a:last); several joined by '+' (or the "
    "option repeated) are concatenated per frame.",
)
VISUAL = typer.Option(
    ...,
    "--visual",
    metavar="ENCODER[:LAYER]",
    autocompletion=complete_features,
    help="Visual features ENCODER[:LAYER] (e.g. avhubert-v:last); several joined by '+' (or the "
    "option repeated) are concatenated per frame.",
)
ON = typer.Option(
    ..., "--on", help="Videos to score: NAME[@VIEW][:SPLIT] (bare NAME = its test split)."
)
PRESET = typer.Option(
    None, "--preset", help="speechforensics (shift 15, mean) or factor (shift 0, p97)."
)
SHIFT = typer.Option(None, "--shift", help="Shift window D in frames (with --pool).")
POOL = typer.Option(
    None, "--pool", help="Pool over time: mean, min, max, logsumexp, p3, p97 (with --shift)."
)
PADDING = typer.Option(
    None,
    "--padding",
    show_default="zero for the mean pool, exclude for the others",
    help="Positions a shift pushes out of the video: zero (count as cosine 0, as "
    "SpeechForensics does) or exclude (left out). With --shift.",
)
FRAME_HZ = typer.Option(
    None, "--frame-hz", help="Resample both streams to this rate (when the encoders' rates differ)."
)
ALLOW_MISSING = typer.Option(False, "--allow-missing", help="Skip videos without both features.")


def _config(
    preset: str | None, shift: int | None, pool: str | None, padding: str | None = None
) -> Any:
    from featstore.trainers.syncfree import sync_config

    return sync_config(preset, shift=shift, pool=pool, padding=padding)


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


@deprecated_aliases({"--all-fakes": "--fakes=all"})
def syncscore_command(
    store: str = STORE,
    audio: list[str] = AUDIO,
    visual: list[str] = VISUAL,
    on: str = ON,
    preset: str | None = PRESET,
    shift: int | None = SHIFT,
    pool: str | None = POOL,
    padding: str | None = PADDING,
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Write a run directory (config, metrics, predictions) here."
    ),
    threshold: str | None = THRESHOLD,
    calibrate: str | None = CALIBRATE_ON,
    no_calibration: bool = NO_CALIBRATION,
    ci: bool = typer.Option(False, "--ci", help="95% bootstrap intervals of AUC and AP."),
    fakes: str = FAKES,
    segment_metrics: str = SEGMENT_METRICS,
    trim_silence: bool = typer.Option(
        False,
        "--trim-silence",
        help="Drop each video's leading silence (needs a leading_silence_s manifest column).",
    ),
    frame_hz: float | None = FRAME_HZ,
    allow_missing: bool = ALLOW_MISSING,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a complete run at --out."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
    cluster: str | None = CLUSTER,
    n_workers: int = N_WORKERS,
) -> None:
    """Score videos by audio-visual feature agreement (no training); AUC / AP / EER.

    With --out the run is a ``syncfree`` run: ``eval``, ``fuse``, ``explain`` and
    ``serve`` (uploads included) take it like any trained run; its frame threshold is
    calibrated on --calibrate-on, or else on the val split of the --on dataset, when that
    is another split. With --cluster the videos are scored on Dask, a partition per
    task (the same numbers); with --out an interrupted run resumes from the partitions
    it finished.
    """
    with user_errors():
        from featstore import open_store
        from featstore.trainers.inputs import parse_feature_set
        from featstore.trainers.kinds.syncfree import run_syncscore
        from featstore.trainers.segments import check_semantics

        audio_set, visual_set = parse_feature_set(audio), parse_feature_set(visual)
        metrics = run_syncscore(
            open_store(store),
            on,
            audio_set,
            visual_set,
            config=_config(preset, shift, pool, padding),
            out=out,
            ci=ci,
            threshold=threshold,
            allow_missing=allow_missing,
            fakes=fakes,
            segment_metrics=check_semantics(segment_metrics),
            trim_silence=trim_silence,
            frame_hz=frame_hz,
            calibrate_on=calibrate_on(calibrate, no_calibration),
            overwrite=overwrite,
            cluster=cluster,
            n_workers=n_workers,
            on_progress=show_progress,
        )
    if as_json:
        typer.echo(json.dumps(metrics, indent=2))
        return
    from rich.console import Console

    b, sync = metrics["binary"], metrics["sync"]
    table = result_table(
        f"{'+'.join(map(str, audio_set))} vs {'+'.join(map(str, visual_set))} "
        f"on {metrics['selection']} "
        f"(shift {sync['shift']}, pool {sync['pool']}, padding {sync['padding']})",
        metrics["fakes"],
        metrics["filter"],
    )
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("videos (real / fake)", f"{b['n']} ({b['n_real']} / {b['n_fake']})")
    if metrics["n_scored"] != metrics["n_evaluated"]:
        table.add_row("scored (before the evaluation filter)", f"{metrics['n_scored']}")
    for key, name in (("auc", "AUC %"), ("ap", "AP %"), ("eer", "EER %")):
        ci_text = b.get(f"{key}_ci")
        table.add_row(
            name, _pct(b[key]) + (f" [{_pct(ci_text[0])}, {_pct(ci_text[1])}]" if ci_text else "")
        )
    for name, value in localization_rows(metrics):
        table.add_row(name, value)
    shifts = metrics["best_shift_counts"]
    top = sorted(shifts.items(), key=lambda kv: -kv[1])[:3]
    table.add_row("most chosen shifts", ", ".join(f"{k:>3} ({v})" for k, v in top))
    Console(width=132).print(table)
    if metrics.get("out"):
        typer.echo(f"run written to {metrics['out']}")


@deprecated_aliases({"--all-fakes": "--fakes=all"})
def layers_command(
    store: str = STORE,
    audio: str = typer.Option(
        ...,
        "--audio",
        metavar="ENCODER[:LAYER]",
        autocompletion=complete_features,
        help="Audio ENCODER (sweep its layers) or ENCODER:LAYER (fixed).",
    ),
    visual: str = typer.Option(
        ...,
        "--visual",
        metavar="ENCODER[:LAYER]",
        autocompletion=complete_features,
        help="Visual ENCODER (sweep its layers) or ENCODER:LAYER (fixed).",
    ),
    on: str = ON,
    preset: str | None = PRESET,
    shift: int | None = SHIFT,
    pool: str | None = POOL,
    padding: str | None = PADDING,
    out: Path = typer.Option(
        ..., "--out", "-o", help="Directory for layers.csv, layers.json and the plot."
    ),
    fakes: str = FAKES,
    plot_format: str | None = plot_format_option(),
    frame_hz: float | None = FRAME_HZ,
    allow_missing: bool = ALLOW_MISSING,
    cluster: str | None = CLUSTER,
    n_workers: int = N_WORKERS,
    as_json: bool = json_option("every layer pair's AUC/AP, the best pair and the files"),
) -> None:
    """Eq. 3 on every stored layer (paper Fig. 7): equal layers, or one side fixed.

    Without --preset/--shift/--pool it uses the paper's setting (speechforensics).
    Each layer pair is a task (on Dask with --cluster); finished pairs are kept
    under --out, so an interrupted sweep resumes where it stopped.
    """
    with user_errors():
        from featstore import open_store
        from featstore.trainers.layers import sweep_layers

        if preset is None and shift is None and pool is None and padding is None:
            preset = "speechforensics"

        def show(r: Any) -> None:
            typer.echo(
                f"audio {r.audio_layer:>5}  visual {r.visual_layer:>5}  "
                f"AUC {_pct(r.auc)}  AP {_pct(r.ap)}  n {r.n} ({r.n_real} real / {r.n_fake} fake)",
                err=as_json,
            )

        sweep = sweep_layers(
            open_store(store),
            on,
            audio,
            visual,
            config=_config(preset, shift, pool, padding),
            out=out,
            allow_missing=allow_missing,
            frame_hz=frame_hz,
            on_layer=show,
            fakes=fakes,
            plot_format=plot_suffix(plot_format),
            cluster=cluster,
            n_workers=n_workers,
        )
    typer.echo(filter_text(sweep.fakes), err=as_json)
    best = sweep.best
    if as_json:
        from featstore.trainers.layers import JSON_NAME

        # layers.json's document (the same shape as the file), with the files written
        doc = json.loads((out / JSON_NAME).read_text())
        print_json({**doc, "files": sweep.files})
        return
    typer.echo(f"best: audio {best.audio_layer} / visual {best.visual_layer}, AUC {_pct(best.auc)}")
    for name, path in sweep.files.items():
        typer.echo(f"{name}: {path}")


def register(app: typer.Typer) -> None:
    """Add ``syncscore`` and ``layers`` to the top-level app."""
    app.command("syncscore")(syncscore_command)
    app.command("layers")(layers_command)
