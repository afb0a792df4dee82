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

from cli.errors import user_errors
from cli.options import plot_file, plot_format_option, plot_suffix

explain_app = typer.Typer(help="Explain a run's decisions on stored videos.", no_args_is_help=True)

STORE = typer.Option(
    None,
    "--store",
    "-s",
    metavar="URL",
    help="Store location (default: the store the run was trained from, else $FEATSTORE_STORE).",
)
ON = typer.Option(
    ..., "--on", help="Videos to evaluate: NAME[@VIEW][:SPLIT] (bare NAME = its test split)."
)


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
    from cli.options import fallback_store
    from featstore import open_store
    from trainers.runs import load_run

    if store is None:
        run = load_run(run_dirs[0])
        store = fallback_store(run.config.get("store") or _member_store(run), what=str(run.path))
    return open_store(store)


open_run_store = _open  # for the other command groups that score runs


def _member_store(run: Any) -> str | None:
    """The store a fusion run's first member recorded (a fusion written without one)."""
    from trainers.kinds import current_config
    from trainers.runs import load_run

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


def localization_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """Table rows of the temporal AUC and the AP/AR, each labelled with its protocol."""
    rows = []
    temporal = metrics.get("temporal")
    if temporal:
        fakes = temporal.get("fakes", metrics.get("fakes", ""))
        rows.append(
            (
                "temporal AUC %",
                f"{_pct(temporal['mean'])} ({temporal['n_videos']} fake videos, {fakes})",
            )
        )
    localization = metrics.get("localization") or {}
    semantics = localization.get("semantics", "official")
    for key, value in localization.items():
        if key.startswith(("AP@", "AR@")):
            rows.append((f"{key} % ({semantics})", _pct(value)))
    return rows


def eval_command(
    run_dir: Path = typer.Argument(..., help="Run directory."),
    store: str | None = STORE,
    on: str = ON,
    ci: bool = typer.Option(False, "--ci", help="95% bootstrap intervals of AUC and AP."),
    threshold: float = typer.Option(
        0.0, "--threshold", help="Per-frame logit above which a frame counts as fake."
    ),
    allow_missing: bool = typer.Option(
        False, "--allow-missing", help="Skip videos without features."
    ),
    all_fakes: bool = typer.Option(
        False,
        "--all-fakes",
        help="Count every fake in AUC/AP and the temporal AUC (default: the paper's filter, "
        "both modalities faked).",
    ),
    segment_metrics: str = SEGMENT_METRICS,
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
    cluster: str | None = CLUSTER,
    n_workers: int = N_WORKERS,
) -> None:
    """AUC / AP / EER (and temporal / segment metrics); writes metrics.json and predictions.

    With --cluster the videos are scored on Dask, a partition per task (the same
    numbers); an interrupted run resumes from the partitions it finished.
    """
    with user_errors():
        from trainers.evaluate import evaluate
        from trainers.segments import check_semantics

        metrics = evaluate(
            run_dir,
            _open(store, [run_dir]),
            on,
            ci=ci,
            threshold=threshold,
            allow_missing=allow_missing,
            all_fakes=all_fakes,
            segment_metrics=check_semantics(segment_metrics),
            cluster=cluster,
            n_workers=n_workers,
            on_progress=show_progress,
        )
    if as_json:
        typer.echo(json.dumps(metrics, indent=2))
        return
    from rich.table import Table

    b = metrics["binary"]
    table = Table(title=f"{run_dir} on {metrics['selection']}")
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
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a complete run at --out."),
) -> None:
    """Late fusion (average of probabilities): every member and the fusion on the same videos."""
    with user_errors():
        from trainers.evaluate import fuse

        result = fuse(
            run_dirs, _open(store, run_dirs), on, out=out, how=how, ci=ci, overwrite=overwrite
        )
    from rich.table import Table

    table = Table(title=f"late fusion on {result['selection']} ({result['n_evaluated']} videos)")
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
) -> None:
    """Pearson correlation of the runs' predictions and pairwise-fusion improvement (Fig. 5)."""
    with user_errors():
        from trainers.evaluate import correlate

        result = correlate(
            run_dirs,
            _open(store, run_dirs),
            on,
            out_dir=out,
            metric=metric,
            plot_format=plot_suffix(plot_format),
        )
    from rich.table import Table

    names = result["names"]
    for title, key, fmt in (
        ("Pearson correlation", "pearson", "{:.2f}"),
        (
            f"relative {metric.upper()} improvement of row fused with column, %",
            "relative_improvement",
            "{:+.1f}",
        ),
    ):
        table = Table(title=f"{title} ({result['selection']}, {result['n']} videos)")
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
    config: Path = typer.Argument(..., help="Grid TOML file (see trainers.grid)."),
    epoch_every: int = typer.Option(
        10, "--epoch-every", min=1, help="Print every N-th training epoch (1: all)."
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
        from cli.train import format_epoch
        from trainers.grid import GridEvent, load_config, run_grid

        cfg = load_config(config)

        def show(event: GridEvent) -> None:
            where = f"[{event.feature} | {event.train}]"
            if event.kind == "train":
                typer.echo(f"{where} training -> {event.run_dir}")
            elif event.kind == "trained":
                typer.echo(f"{where} trained -> {event.run_dir}")
            elif event.kind == "reuse":
                typer.echo(f"{where} reusing complete run {event.run_dir}")
            elif event.kind == "epoch" and (event.epoch.epoch % epoch_every == 0):
                typer.echo(f"{where} {format_epoch(event.epoch)}")
            elif event.kind == "result":
                r = event.result
                typer.echo(
                    f"{where} test {event.test}: AUC {_pct(r.auc)}  AP {_pct(r.ap)}  n {r.n}"
                )

        outcome = run_grid(cfg, on_event=show, cluster=cluster, n_workers=n_workers)
        from trainers.report import paper_grid

    typer.echo(outcome.table.to_markdown())
    typer.echo(paper_grid(outcome.table, "auc").to_markdown(bold_best=True))
    for name, path in outcome.files.items():
        typer.echo(f"{name}: {path}")


@explain_app.command("temporal")
def explain_temporal_command(
    run_dir: Path = typer.Argument(..., help="Run directory of any kind."),
    store: str | None = STORE,
    dataset: str = typer.Option(..., "--dataset", "-d", help="Dataset of the stored video."),
    video: str = typer.Option(..., "--video", help="video_id in the dataset's manifest."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Write the plot to this file (.png, .pdf or .svg)."
    ),
    threshold: float = typer.Option(0.0, "--threshold", help="Frame score threshold for segments."),
    plot_format: str | None = plot_format_option(),
    as_json: bool = typer.Option(False, "--json", help="Print the explanation as JSON."),
) -> None:
    """Per-frame scores of one stored video and the fake segments they imply (paper Fig. 3)."""
    if out is not None:
        out = plot_file(out, plot_format)
    with user_errors():
        from trainers.explain import explain_temporal

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
    predicted = ", ".join(f"{s.start_s:.2f}-{s.end_s:.2f}s" for s in e.predicted_segments)
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
    app.add_typer(explain_app, name="explain")
