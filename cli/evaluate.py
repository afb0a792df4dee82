"""``featstore eval | fuse | correlate | grid | explain temporal``: evaluate trained runs.

The commands are registered on the top-level app by ``register(app)``.
``--store`` defaults to the store the run was trained from.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
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
    plot_suffix,
)
from featstore.cli.output import json_option, print_json

explain_app = typer.Typer(help="Explain a run's decisions on stored videos.", no_args_is_help=True)

STORE = typer.Option(
    None,
    "--store",
    "-s",
    metavar="URL",
    show_default="the store the run was trained from, else $FEATSTORE_STORE",
    help="Store location.",
)
ON = typer.Option(
    ..., "--on", help="Videos to evaluate: NAME[@VIEW][:SPLIT] (bare NAME = its test split)."
)
FAKES = fakes_option()


CLUSTER = typer.Option(
    None,
    "--cluster",
    help="Run on Dask: 'local' (worker processes on this machine) or a scheduler address "
    "tcp://HOST:PORT. The store must be reachable from the workers under the same URL.",
)
N_WORKERS = typer.Option(2, "--n-workers", min=1, help="Worker processes for --cluster local.")


def show_progress(progress: Any) -> None:
    """One stderr line per finished cluster task (stdout stays for results and --json)."""
    reused = f", {progress.reused} reused" if progress.reused else ""
    typer.echo(
        f"[{progress.done}/{progress.total}{reused}] {progress.name} ({progress.elapsed_s:.1f}s)",
        err=True,
    )


def _console() -> Any:
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 132))
    return console


def _open(store: str | None, run_dirs: Sequence[Path]) -> Any:
    """The given store, or the one recorded in the first run's config."""
    from featstore import open_store
    from featstore.cli.options import fallback_store
    from featstore.trainers.runs import load_run

    if store is None:
        run = load_run(run_dirs[0])
        store = fallback_store(run.config.get("store") or _member_store(run), what=str(run.path))
    return open_store(store)


open_run_store = _open  # for the other command groups that score runs


def _member_store(run: Any) -> str | None:
    """The store a fusion run's first member recorded (a fusion written without one)."""
    from featstore.trainers.kinds import current_config
    from featstore.trainers.runs import load_run

    for member in current_config(run).get("config", {}).get("members") or []:
        found = load_run(run.path / member["path"]).config.get("store")
        if found:
            return found
    return None


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _ci(ci: Any) -> str:
    return "" if not ci else f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


SEGMENT_METRICS = typer.Option(
    "official",
    "--segment-metrics",
    help="AV-Deepfake1M AP/AR semantics: official (the official tool's, as published numbers "
    "are) or corrected (float64, proposals ranked by confidence, AP with its first step).",
)


THRESHOLD = typer.Option(
    None,
    "--threshold",
    show_default="the run's chosen one",
    help="Frame threshold of the segments: a number, or a name of the run's card (segment_f1, "
    "real_videos: calibrated at training; paper: 0).",
)
SMOOTH_S = typer.Option(
    None,
    "--smooth-s",
    min=0.0,
    show_default="run's",
    help="Running-median window of frame scores, s.",
)
MIN_SEGMENT_S = typer.Option(
    None, "--min-segment-s", min=0.0, show_default="run's", help="Drop shorter segments, s."
)
MERGE_GAP_S = typer.Option(
    None, "--merge-gap-s", min=0.0, show_default="run's", help="Merge segments this close, s."
)
CALIBRATE_ON = typer.Option(
    None,
    "--calibrate-on",
    help="Learn the run's frame threshold on NAME[@VIEW][:SPLIT] (reals and annotated fakes).",
)
NO_CALIBRATION = typer.Option(
    False, "--no-calibration", help="Keep the paper's frame threshold 0 (record it as such)."
)


def calibrate_on(selection: str | None, off: bool) -> Any:
    """``--calibrate-on`` / ``--no-calibration`` as the library takes them."""
    from featstore.trainers.data import AUTO

    if off and selection is not None:
        raise typer.BadParameter("give either --calibrate-on or --no-calibration")
    return None if off else (selection if selection is not None else AUTO)


def _num(value: Any, fmt: str = ".3f") -> str:
    return "-" if value is None else format(value, fmt)


def result_table(title: str, fakes: str, record: dict[str, Any] | None = None) -> Any:
    """A Rich table of a command's numbers: its title kept on one line, the evaluation
    filter as its caption."""
    from rich.table import Table

    return Table(title=title, caption=filter_text(fakes, record), min_width=len(title) + 4)


def filter_text(fakes: str, record: dict[str, Any] | None = None) -> str:
    """The evaluation filter as printed under every command's numbers: what it keeps, and
    with its ``record`` (``featstore.trainers.evaluation_filter.FilterRecord``) what it left out."""
    from featstore.trainers.evaluation_filter import describe

    text = describe(fakes)
    left = (record or {}).get("n_left_out") or 0
    if left:
        text += f" ({left} {'video' if left == 1 else 'videos'} left out)"
    return text


def localization_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """Table rows of the temporal AUC, the AP/AR (each labelled with its protocol), the
    segments at the frame threshold, the length bias and the videos left out."""
    rows = []
    temporal = metrics.get("temporal")
    if temporal:
        from featstore.trainers.evaluation_filter import recorded_fakes

        fakes = recorded_fakes(temporal if "fakes" in temporal else metrics)
        rows.append(
            (
                "temporal AUC %",
                f"{_pct(temporal['mean'])} ({temporal['n_videos']} fake videos, filter {fakes})",
            )
        )
    localization = metrics.get("localization") or {}
    semantics = localization.get("semantics", "official")
    for key, value in localization.items():
        if key.startswith(("AP@", "AR@")):
            rows.append((f"{key} % ({semantics})", _pct(value)))
    if localization:
        rows.append(("AP/AR videos", f"{localization['n_videos']}"))
    frame = metrics.get("frame_threshold") or {}
    at = metrics.get("at_threshold")
    if frame:
        r = frame["rules"]
        rows.append((
            "frame threshold",
            f"{frame['value']:.4g} ({frame['name']}; smooth {r['smooth_s']:g} s, "
            f"min {r['min_segment_s']:g} s, merge {r['merge_gap_s']:g} s)",
        ))  # fmt: skip
    if at:
        rows.append((
            "frame F1 / IoU %",
            f"{_pct(at['frame_f1'])} / {_pct(at['frame_iou'])} (mean IoU over fakes "
            f"{_pct(at['mean_iou'])})",
        ))  # fmt: skip
        rows.append((
            f"segments P / R / F1 % (IoU > {at['iou']:g})",
            f"{_pct(at['segment_precision'])} / {_pct(at['segment_recall'])} / "
            f"{_pct(at['segment_f1'])}",
        ))  # fmt: skip
        rows.append((
            "videos with a segment",
            f"fakes {at['fakes_with_segment']}/{at['n_fakes']}, reals "
            f"{at['reals_with_segment']}/{at['n_reals']} ({at['false_segments_on_reals']} "
            "false segments)",
        ))  # fmt: skip
    duration = metrics.get("duration")
    if duration:
        rows.append((
            "real score vs duration r",
            f"{_num(duration['pearson_r'], '+.2f')} (Spearman {_num(duration['spearman_r'], '+.2f')}, "
            f"{duration['n_real']} reals, {duration['min_s']:.1f}-{duration['max_s']:.1f} s)",
        ))  # fmt: skip
    windows = metrics.get("windows")
    if windows:
        rows.append((
            "windows",
            f"{windows['window_s']:.2f} s, hop {windows['hop_s']:.2f} s "
            f"({windows['n_windowed']} videos windowed)"
            if windows["window_rows"]
            else "none: the run records no training lengths",
        ))  # fmt: skip
    short = metrics.get("too_short")
    if short:
        rows.append(("left out: too short", f"{short['n']} videos under {short['min_rows']} rows"))
    return rows


@deprecated_aliases({"--all-fakes": "--fakes=all"})
def eval_command(
    run_dir: Path = typer.Argument(..., help="Run directory."),
    store: str | None = STORE,
    on: str = ON,
    ci: bool = typer.Option(False, "--ci", help="95% bootstrap intervals of AUC and AP."),
    threshold: str | None = THRESHOLD,
    smooth_s: float | None = SMOOTH_S,
    min_segment_s: float | None = MIN_SEGMENT_S,
    merge_gap_s: float | None = MERGE_GAP_S,
    windows: bool = typer.Option(
        False,
        "--windows",
        show_default="whole clips, as the paper",
        help="Score videos longer than the run's training clips in windows of that length, "
        "the video score their maximum.",
    ),
    allow_missing: bool = typer.Option(
        False, "--allow-missing", help="Skip videos without features."
    ),
    fakes: str = FAKES,
    segment_metrics: str = SEGMENT_METRICS,
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
    cluster: str | None = CLUSTER,
    n_workers: int = N_WORKERS,
) -> None:
    """AUC / AP / EER (and temporal / segment metrics); writes metrics.json and predictions.

    The result is stored under its selection and filter, so --fakes paper and
    --fakes all keep one entry each. With --cluster the videos are scored on Dask,
    a partition per task (the same numbers); an interrupted run resumes from the
    partitions it finished.
    """
    with user_errors():
        from featstore.trainers.evaluate import evaluate
        from featstore.trainers.segments import check_semantics

        metrics = evaluate(
            run_dir,
            _open(store, [run_dir]),
            on,
            ci=ci,
            threshold=threshold,
            smooth_s=smooth_s,
            min_segment_s=min_segment_s,
            merge_gap_s=merge_gap_s,
            windows=windows,
            allow_missing=allow_missing,
            fakes=fakes,
            segment_metrics=check_semantics(segment_metrics),
            cluster=cluster,
            n_workers=n_workers,
            on_progress=show_progress,
        )
    if as_json:
        typer.echo(json.dumps(metrics, indent=2))
        return

    b = metrics["binary"]
    table = result_table(
        f"{run_dir} on {metrics['selection']}", metrics["fakes"], metrics["filter"]
    )
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("videos (real / fake)", f"{b['n']} ({b['n_real']} / {b['n_fake']})")
    if metrics["n_scored"] != metrics["n_evaluated"]:
        table.add_row("scored (before the evaluation filter)", f"{metrics['n_scored']}")
    table.add_row("AUC %", _pct(b["auc"]) + _ci(b.get("auc_ci")))
    table.add_row("AP %", _pct(b["ap"]) + _ci(b.get("ap_ci")))
    table.add_row("EER %", _pct(b["eer"]))
    for name, value in localization_rows(metrics):
        table.add_row(name, value)
    _console().print(table)


def fuse_command(
    run_dirs: list[Path] = typer.Argument(..., help="Two or more run directories."),
    store: str | None = STORE,
    on: str = ON,
    out: Path | None = typer.Option(None, "--out", "-o", help="Write a fusion run directory here."),
    how: str = typer.Option(
        "intersect", "--how", help="intersect: the videos all runs scored; exact: require the same."
    ),
    ci: bool = typer.Option(False, "--ci", help="95% bootstrap intervals of AUC and AP."),
    calibrate: str | None = CALIBRATE_ON,
    no_calibration: bool = NO_CALIBRATION,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a complete run at --out."),
    fakes: str = FAKES,
    as_json: bool = json_option("every member's and the fusion's metrics"),
) -> None:
    """Late fusion (average of probabilities): every member and the fusion on the same videos.

    With --out, the fusion run's frame threshold is calibrated on --calibrate-on, or else
    on the validation selection its members share, if they do.
    """
    with user_errors():
        from featstore.trainers.evaluate import fuse

        result = fuse(
            run_dirs, _open(store, run_dirs), on, out=out, how=how, ci=ci, overwrite=overwrite,
            calibrate_on=calibrate_on(calibrate, no_calibration), fakes=fakes,
        )  # fmt: skip
    if as_json:
        print_json(result)
        return

    f = result["filter"]
    table = result_table(
        f"late fusion on {result['selection']} ({result['n_evaluated']} videos: "
        f"{f['n_real']} real / {f['n_fake']} fake)",
        result["fakes"],
        f,
    )
    for col in ("model", "AUC %", "AP %", "EER %"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name, m in [*result["members"].items(), ("fused", result["fused"])]:
        table.add_row(
            name,
            _pct(m["auc"]) + _ci(m.get("auc_ci")),
            _pct(m["ap"]) + _ci(m.get("ap_ci")),
            _pct(m["eer"]),
        )
    _console().print(table)
    if result.get("out"):
        typer.echo(f"fusion run written to {result['out']}")


def correlate_command(
    run_dirs: list[Path] = typer.Argument(..., help="Two or more run directories."),
    store: str | None = STORE,
    on: str = ON,
    out: Path = typer.Option(
        ..., "--out", "-o", help="Directory for the CSV, JSON and plot files."
    ),
    metric: str = typer.Option("auc", "--metric", help="auc or ap, for the relative improvement."),
    plot_format: str | None = plot_format_option(),
    fakes: str = FAKES,
    as_json: bool = json_option("the correlations, the improvements and the files written"),
) -> None:
    """Pearson correlation of the runs' predictions and pairwise-fusion improvement (Fig. 5)."""
    with user_errors():
        from featstore.trainers.evaluate import correlate

        result = correlate(
            run_dirs,
            _open(store, run_dirs),
            on,
            out_dir=out,
            metric=metric,
            plot_format=plot_suffix(plot_format),
            fakes=fakes,
        )
    if as_json:
        print_json({**result, "out": str(out)})
        return

    names = result["names"]
    for title, key, fmt in (
        ("Pearson correlation", "pearson", "{:.2f}"),
        (
            f"relative {metric.upper()} improvement of row fused with column, %",
            "relative_improvement",
            "{:+.1f}",
        ),
    ):
        table = result_table(
            f"{title} ({result['selection']}, {result['n']} videos: "
            f"{result['n_real']} real / {result['n_fake']} fake)",
            result["fakes"],
            result["filter"],
        )
        table.add_column("")
        for name in names:
            table.add_column(name, justify="right")
        for i, (name, row) in enumerate(zip(names, result[key], strict=True)):
            # a model fused with itself gains nothing by definition: no number
            cells = [
                "–" if key == "relative_improvement" and i == j else fmt.format(v)
                for j, v in enumerate(row)
            ]
            table.add_row(name, *cells)
        _console().print(table)
    typer.echo(f"written to {out}")


def grid_command(
    config: Path = typer.Argument(..., help="Grid TOML file (see featstore.trainers.grid)."),
    epoch_every: int = typer.Option(
        10, "--epoch-every", min=1, metavar="N", help="Print every N-th training epoch (1: all)."
    ),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="Print no progress lines: only the tables."
    ),
    as_json: bool = typer.Option(
        False,
        "--json",
        help="Print the grid (features, trains, tests, rows) and its files as JSON; progress "
        "lines go to stderr.",
    ),
    fakes: str | None = fakes_option(
        None,
        help="Which videos count on every test set: paper (reals and the fakes with both "
        "modalities manipulated, where the dataset says which) or all (every fake).",
        show_default="each dataset's `fakes` in the TOML, paper unless set",
    ),
    cluster: str | None = CLUSTER,
    n_workers: int = N_WORKERS,
) -> None:
    """Train one probe per (feature, training dataset), test on every dataset, write the tables.

    With --cluster every probe and every (probe, test set) evaluation is a Dask
    task; the files are those of a local run. Complete runs and their stored
    metrics are reused, so an interrupted grid resumes where it stopped.
    """
    with user_errors():
        from featstore.cli.train import format_epoch
        from featstore.trainers.grid import GridEvent, load_config, run_grid

        cfg = load_config(config)

        def say(text: str) -> None:
            if not quiet:
                typer.echo(text, err=as_json)

        def show(event: GridEvent) -> None:
            where = f"[{event.feature} | {event.train}]"
            if event.kind == "train":
                say(f"{where} training -> {event.run_dir}")
            elif event.kind == "trained":
                say(f"{where} trained -> {event.run_dir}")
            elif event.kind == "reuse":
                say(f"{where} reusing complete run {event.run_dir}")
            elif event.kind == "epoch" and (event.epoch.epoch % epoch_every == 0):
                say(f"{where} {format_epoch(event.epoch)}")
            elif event.kind == "result":
                r = event.result
                say(
                    f"{where} test {event.test}: AUC {_pct(r.auc)}  AP {_pct(r.ap)}  n {r.n} "
                    f"({r.n_real} real / {r.n_fake} fake, filter {r.fakes})"
                )

        outcome = run_grid(cfg, on_event=show, fakes=fakes, cluster=cluster, n_workers=n_workers)
        from featstore.trainers.report import paper_grid

    if as_json:
        doc = json.loads(outcome.table.to_json())
        doc["files"] = {name: str(path) for name, path in outcome.files.items()}
        typer.echo(json.dumps(doc, indent=2))
        return
    typer.echo(outcome.table.to_markdown())
    typer.echo(outcome.table.filter_caption())
    typer.echo(paper_grid(outcome.table, "auc").to_markdown(bold_best=True))
    for name, path in outcome.files.items():
        typer.echo(f"{name}: {path}")


@explain_app.command("temporal")
@deprecated_aliases(DATASET_ALIASES)
def explain_temporal_command(
    run_dir: Path = typer.Argument(..., help="Run directory of any kind."),
    store: str | None = STORE,
    on: str = ON_DATASET,
    video: str = typer.Option(..., "--video", help="video_id in the dataset's manifest."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Write the plot to this file (.png, .pdf or .svg)."
    ),
    threshold: str | None = THRESHOLD,
    plot_format: str | None = plot_format_option(),
    as_json: bool = typer.Option(False, "--json", help="Print the explanation as JSON."),
) -> None:
    """Per-frame scores of one stored video and the fake segments they imply (paper Fig. 3)."""
    dataset = dataset_name(on)
    if out is not None:
        out = plot_file(out, plot_format)
    with user_errors():
        from featstore.trainers.explain import explain_temporal

        e = explain_temporal(
            run_dir, _open(store, [run_dir]), dataset, video, out_png=out, threshold=threshold
        )
    if as_json:
        typer.echo(json.dumps(e.to_dict(), indent=2))
        return
    typer.echo(
        f"{dataset}/{video}: label {'fake' if e.label else 'real'}, score {e.score:+.3f}, "
        f"P(fake) {e.probability:.3f}, {len(e.frame_scores)} frames at {e.frame_hz:g} Hz"
    )
    predicted = ", ".join(
        f"{s.start_s:.2f}-{s.end_s:.2f}s" + (" (below the threshold)" if s.below_threshold else "")
        for s in e.predicted_segments
    )
    typer.echo(f"frame threshold {e.threshold:.4g} ({e.threshold_name})")
    truth = ", ".join(f"{a:.2f}-{b:.2f}s" for a, b in e.truth_segments)
    typer.echo(f"predicted fake segments: {predicted or 'none'}")
    typer.echo(f"annotated fake segments: {truth or 'none'}")
    if e.png is not None:
        typer.echo(f"plot written to {e.png}")


def register(app: typer.Typer) -> None:
    """Add ``eval``, ``fuse``, ``correlate``, ``grid`` and ``explain`` to the top-level app."""
    app.command("eval")(eval_command)
    app.command("fuse")(fuse_command)
    app.command("correlate")(correlate_command)
    app.command("grid")(grid_command)
    from featstore.cli.group import FeatstoreGroup

    app.add_typer(explain_app, name="explain", cls=FeatstoreGroup)
