"""``featstore datasets import|list|show|protocol|split|silence|segment|...``: dataset manifests and their views."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from featstore.cli.errors import EXIT_INTERRUPTED, user_errors
from featstore.cli.group import deprecated_aliases
from featstore.cli.options import store_option
from featstore.cli.output import json_option, print_json
from featstore.cli.progress import Every, every_items_option, every_s_option, progress

if TYPE_CHECKING:
    import pandas as pd

    from featstore.datasets import Problem
    from featstore.store import FeatureStore

app = typer.Typer(help="Import and inspect dataset manifests.", no_args_is_help=True)

# Kept literal so that `--help` does not import pandas; a test checks it against the registry.
FORMAT_NAMES = ("av1m", "favc", "avlips", "dfe2024", "exddv", "real", "folder", "csv")
PROTOCOL_NAMES = ("av1m", "av1m-real", "favc", "avlips", "dfe2024", "all-test", "official")
STORE = store_option()
ROOT = typer.Argument(..., metavar="ROOT", help="Dataset root folder (or its metadata file).")
NAME = typer.Argument(..., help="Dataset name in the store.")
SEED = typer.Option(43, "--seed", help="Seed of the protocol's random choices.")
DEFAULT = typer.Option(
    False, "--default", help="Make it the view that selections without @VIEW use."
)
REPLACE = typer.Option(False, "--replace", help="Replace a view of the same name.")
MAX_PROBLEMS = typer.Option(20, "--max-problems", help="Problems to print.")
SHOWN_COLUMNS = ["video_id", "label", "split", "modify_type", "fake_segments", "duration_s"]


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return frame.to_dict(orient="records")


def _counts(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Videos per split, label and modify_type, as JSON records."""
    from featstore.datasets import manifest_counts

    return _records(manifest_counts(df))


def _view_counts(manifest: pd.DataFrame, view: str) -> list[dict[str, Any]]:
    from featstore.datasets import resolve_view, view_counts

    return _records(view_counts(manifest, resolve_view(manifest, view).splits))


def _counts_text(df: pd.DataFrame) -> str:
    from featstore.datasets import manifest_counts

    counts = manifest_counts(df)
    return "(no videos)" if counts.empty else counts.to_string(index=False)


def _view_text(manifest: pd.DataFrame, view: str) -> str:
    """A view's composition: videos per split, label and modify_type."""
    from featstore.datasets import resolve_view, view_counts

    counts = view_counts(manifest, resolve_view(manifest, view).splits)
    return "(no videos)" if counts.empty else counts.to_string(index=False)


def _lines(items: Sequence[Any], limit: int) -> str:
    lines = [f"  {p}" for p in items[:limit]]
    if len(items) > limit:
        lines.append(f"  ... and {len(items) - limit} more")
    return "\n".join(lines)


def _report(header: str, items: Sequence[Problem], limit: int) -> None:
    if items:
        typer.echo(header.format(n=len(items)))
        typer.echo(_lines(items, limit))


def _protocol_info(protocol: str, seed: int) -> dict[str, Any]:
    from featstore.datasets import get_protocol

    p = get_protocol(protocol)
    return {"protocol": p.name, "seed": seed, "evaluation": p.evaluation}


@app.command("import")
@deprecated_aliases({"-n": "--name"})
def import_dataset(
    fmt: str = typer.Argument(..., metavar="FORMAT", help=f"One of: {', '.join(FORMAT_NAMES)}."),
    root: Path = ROOT,
    name: str = typer.Option(..., "--name", help="Dataset name in the store."),
    store: str = STORE,
    strict: bool = typer.Option(
        False, "--strict", help="Fail on any problem instead of dropping bad rows."
    ),
    protocol: str | None = typer.Option(
        None,
        "--protocol",
        "-p",
        help=f"Also add this protocol as the default view: {', '.join(PROTOCOL_NAMES)}.",
    ),
    seed: int = SEED,
    check_files: bool = typer.Option(
        True, "--check-files/--no-check-files", help="Report rows whose media file is missing."
    ),
    max_problems: int = MAX_PROBLEMS,
    as_json: bool = json_option("what was imported (counts, views, dropped and corrected rows)"),
) -> None:
    """Read, validate and store a dataset's manifest (every valid video, official splits)."""
    with user_errors():
        import datetime

        from featstore import open_store
        from featstore.datasets import (
            OFFICIAL,
            DatasetFormatError,
            add_view,
            get_protocol,
            protocol_splits,
            read_dataset,
        )

        if protocol is not None:
            get_protocol(protocol)  # fail before a long read
        result = read_dataset(fmt, root, strict=strict, check_files=check_files)
        manifest = result.manifest
        if manifest.empty:
            raise DatasetFormatError(
                f"nothing to import from {root}: no valid videos "
                f"({len(result.problems)} problem(s))",
                result.problems,
            )
        manifest.attrs = {
            "format": fmt,
            "root": str(result.root),
            "protocol": protocol,
            "seed": seed if protocol is not None else None,
            "imported_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "n_problems": len(result.problems),
            "n_corrected": len(result.corrections),
            "views": {},
            "default_view": None,
        }
        view = protocol if protocol not in (None, OFFICIAL) else None
        if view is not None:
            splits = protocol_splits(view, manifest, seed=seed)
            manifest = add_view(manifest, view, splits, _protocol_info(view, seed), default=True)
        open_store(store, mode="a").write_manifest(name, manifest, attrs=manifest.attrs)
    if as_json:
        print_json(
            {
                "dataset": name,
                "format": fmt,
                "root": str(result.root),
                "videos": len(manifest),
                "protocol": protocol,
                "seed": seed if protocol else None,
                "default_view": view,
                "counts": _counts(manifest),
                "view_counts": None if view is None else _view_counts(manifest, view),
                "dropped": [str(p) for p in result.problems],
                "corrected": [str(p) for p in result.corrections],
            }
        )
        return
    typer.echo(
        f"imported {len(manifest)} videos into {name!r} ({fmt}"
        + (f", protocol {protocol}, seed {seed}" if protocol else "")
        + f") from {result.root}"
    )
    typer.echo(_counts_text(manifest))
    if view is not None:
        typer.echo(f"view {view!r} (default; select {name}:SPLIT or {name}@{view}:SPLIT):")
        typer.echo(_view_text(manifest, view))
    _report("{n} row(s) dropped:", result.problems, max_problems)
    _report("{n} row(s) corrected:", result.corrections, max_problems)


def _views_line(attrs: dict[str, Any]) -> str:
    from featstore.datasets import views_of

    default = attrs.get("default_view")
    names = [f"{v}*" if v == default else v for v in sorted(views_of(attrs))]
    return ",".join(names) or "-"


@app.command("list")
def list_datasets(
    store: str = STORE,
    as_json: bool = json_option("one object per dataset (videos, real, fake, splits, views)"),
) -> None:
    """Datasets in the store with their video counts and views (* = default view)."""
    with user_errors():
        from featstore import open_store
        from featstore.datasets import views_of
        from featstore.errors import ManifestError

        fs = open_store(store, mode="r")
        lines = []
        docs: list[dict[str, Any]] = []
        for name in fs.datasets():
            try:
                df = fs.manifest(name)
            except ManifestError:
                lines.append(f"{name}\t(no manifest)")
                docs.append({"name": name, "manifest": False})
                continue
            attrs = df.attrs
            splits = df["split"].value_counts().sort_index() if "split" in df.columns else {}
            split_text = " ".join(f"{k}={v}" for k, v in dict(splits).items())
            n_fake = int((df["label"] == 1).sum()) if "label" in df.columns else 0
            docs.append(
                {
                    "name": name,
                    "manifest": True,
                    "videos": len(df),
                    "real": len(df) - n_fake,
                    "fake": n_fake,
                    "splits": {str(k): int(v) for k, v in dict(splits).items()},
                    "format": attrs.get("format"),
                    "views": sorted(views_of(attrs)),
                    "default_view": attrs.get("default_view"),
                }
            )
            lines.append(
                f"{name}\t{len(df)} videos ({len(df) - n_fake} real, {n_fake} fake)\t"
                f"{split_text}\tformat={attrs.get('format', '?')} views={_views_line(attrs)}"
            )
    if as_json:
        print_json(docs)
        return
    typer.echo("\n".join(lines) if lines else "(no datasets)")


def _view_lines(df: pd.DataFrame) -> list[str]:
    from featstore.datasets import views_of

    default = df.attrs.get("default_view")
    lines = []
    for view, info in sorted(views_of(df.attrs).items()):
        made = (
            f"protocol {info.get('protocol')}, seed {info.get('seed')}"
            if info.get("protocol") != "files"
            else "split files " + ", ".join(f"{k}={v}" for k, v in info.get("files", {}).items())
        )
        splits = info.get("splits", {})
        sizes = " ".join(
            f"{s}={v['videos']} ({v['real']} real, {v['fake']} fake)" for s, v in splits.items()
        )
        mark = " (default)" if view == default else ""
        lines.append(f"  {view}{mark}: {made}; {sizes}")
    return lines


@app.command("show")
@deprecated_aliases({"-l": "--limit"})
def show_dataset(
    name: str = NAME,
    store: str = STORE,
    limit: int = typer.Option(10, "--limit", "-n", help="Rows to print."),
    view: str | None = typer.Option(
        None, "--view", help="Also print this view's composition (split x modify_type)."
    ),
    as_json: bool = json_option("the import details, views, counts and first rows"),
) -> None:
    """A dataset's import details, views, counts and first rows."""
    with user_errors():
        import pandas as pd

        from featstore import open_store

        df = open_store(store, mode="r").manifest(name)
        composition = None if view is None else _view_text(df, view)
        if as_json:
            from featstore.datasets import views_of

            shown = [c for c in SHOWN_COLUMNS if c in df.columns]
            print_json(
                {
                    "name": name,
                    "attrs": {
                        k: v for k, v in df.attrs.items() if k not in ("views", "default_view")
                    },
                    "views": views_of(df.attrs),
                    "default_view": df.attrs.get("default_view"),
                    "videos": len(df),
                    "counts": _counts(df),
                    "view_counts": None if view is None else _view_counts(df, view),
                    "rows": _records(df[shown].head(limit)),
                }
            )
            return
    for key, value in df.attrs.items():
        if key not in ("views", "default_view"):
            typer.echo(f"{key}: {value}")
    views = _view_lines(df)
    typer.echo("views: " + ("(none; selections use the split column)" if not views else ""))
    for line in views:
        typer.echo(line)
    typer.echo(f"videos: {len(df)}")
    typer.echo(_counts_text(df))
    if composition is not None:
        typer.echo(f"view {view!r}:")
        typer.echo(composition)
    shown = [c for c in SHOWN_COLUMNS if c in df.columns]
    with pd.option_context("display.max_colwidth", 60, "display.width", 200):
        typer.echo(df[shown].head(limit).to_string(index=False))


def _writable_manifest(fs: FeatureStore, name: str, view: str, replace: bool) -> pd.DataFrame:
    """The manifest to add ``view`` to; refuses an existing view (without ``replace``)
    and stores whose split column is not the official one (imported before views)."""
    from featstore.datasets import ViewError, views_of
    from featstore.datasets.views import check_view_name, has_views

    check_view_name(view)
    manifest = fs.manifest(name)
    attrs = manifest.attrs
    if not has_views(attrs) and attrs.get("protocol") not in (None, "official"):
        raise ViewError(
            f"dataset {name} was imported with --protocol {attrs['protocol']} before views "
            "existed: its split column is that protocol's, not the official split; "
            "import it again to add other views"
        )
    if view in views_of(attrs) and not replace:
        raise ViewError(f"dataset {name} already has a view {view!r} (pass --replace)")
    return manifest


@app.command("protocol")
def add_protocol(
    name: str = NAME,
    protocol: str = typer.Option(
        ..., "--protocol", "-p", help=f"One of: {', '.join(PROTOCOL_NAMES)}."
    ),
    view: str | None = typer.Option(None, "--as", show_default="the protocol's", help="View name."),
    seed: int = SEED,
    store: str = STORE,
    default: bool = DEFAULT,
    replace: bool = REPLACE,
    as_json: bool = json_option("the view added and its composition"),
) -> None:
    """Add a protocol as a view of an imported dataset (features are shared, not re-extracted).

    Select it as NAME@VIEW:SPLIT (e.g. av1m@av1m-real:train) in train, eval, syncscore,
    layers, grid, fuse and extract; with --default, NAME:SPLIT selects it too.
    """
    with user_errors():
        from featstore import open_store
        from featstore.datasets import add_view, get_protocol, protocol_splits

        get_protocol(protocol)
        view = view or protocol
        fs = open_store(store, mode="a")
        manifest = _writable_manifest(fs, name, view, replace)
        splits = protocol_splits(protocol, manifest, seed=seed)
        manifest = add_view(manifest, view, splits, _protocol_info(protocol, seed), default=default)
        fs.write_manifest(name, manifest, attrs=manifest.attrs)
    if as_json:
        print_json(
            {
                "dataset": name,
                "view": view,
                "protocol": protocol,
                "seed": seed,
                "default": default,
                "view_counts": _view_counts(manifest, view),
            }
        )
        return
    typer.echo(
        f"added view {view!r} to {name!r} (protocol {protocol}, seed {seed}"
        + (", default" if default else "")
        + f"): select {name}@{view}:SPLIT"
    )
    typer.echo(_view_text(manifest, view))


@app.command("split")
def apply_splits(
    name: str = NAME,
    train: Path | None = typer.Option(None, "--train", help="File of the train videos."),
    val: Path | None = typer.Option(None, "--val", help="File of the validation videos."),
    test: Path | None = typer.Option(None, "--test", help="File of the test videos."),
    view: str = typer.Option("published", "--as", help="View name."),
    store: str = STORE,
    default: bool = DEFAULT,
    replace: bool = REPLACE,
    max_problems: int = MAX_PROBLEMS,
    as_json: bool = json_option("the view added, the lines matched and those unmatched"),
) -> None:
    """Apply published split files (lines `path,label` or `video_id`) to a dataset as a view.

    Lines match the manifest's paths (relative to the dataset root, with or without
    extension) or video ids; unmatched lines are reported; a label that contradicts the
    manifest, or a video in two files, is an error and nothing is written.
    """
    with user_errors():
        from featstore import open_store
        from featstore.datasets import add_view, apply_split_files

        files = {k: v for k, v in (("train", train), ("val", val), ("test", test)) if v}
        fs = open_store(store, mode="a")
        manifest = _writable_manifest(fs, name, view, replace)
        result = apply_split_files(manifest, files)
        info = {
            "protocol": "files",
            "files": {k: str(Path(v).resolve()) for k, v in files.items()},
            "unmatched": len(result.unmatched),
        }
        manifest = add_view(manifest, view, result.splits, info, default=default)
        fs.write_manifest(name, manifest, attrs=manifest.attrs)
    if as_json:
        print_json(
            {
                "dataset": name,
                "view": view,
                "files": info["files"],
                "default": default,
                "matched": dict(result.matched),
                "duplicates": result.duplicates,
                "unmatched": [str(u) for u in result.unmatched],
                "view_counts": _view_counts(manifest, view),
            }
        )
        return
    matched = ", ".join(f"{k} {v}" for k, v in result.matched.items())
    typer.echo(f"added view {view!r} to {name!r}: matched {matched}; select {name}@{view}:SPLIT")
    typer.echo(_view_text(manifest, view))
    if result.duplicates:
        typer.echo(f"{result.duplicates} line(s) repeat a video of the same split (ignored)")
    _report("{n} line(s) name no video of the manifest:", result.unmatched, max_problems)


@app.command("drop-view")
def drop_view_command(
    name: str = NAME,
    view: str = typer.Argument(..., help="The view to remove."),
    store: str = STORE,
    as_json: bool = json_option("the dataset and the view removed"),
) -> None:
    """Remove a view (the videos and their features stay)."""
    with user_errors():
        from featstore import open_store
        from featstore.datasets import drop_view

        fs = open_store(store, mode="a")
        manifest = drop_view(fs.manifest(name), view)
        fs.write_manifest(name, manifest, attrs=manifest.attrs)
    if as_json:
        print_json({"dataset": name, "removed_view": view})
        return
    typer.echo(f"removed view {view!r} from {name!r}")


@app.command("default-view")
def default_view_command(
    name: str = NAME,
    view: str = typer.Argument(..., help="A view, or 'official' for the split column."),
    store: str = STORE,
    as_json: bool = json_option("the dataset and its default view"),
) -> None:
    """Choose the view that selections without @VIEW use."""
    with user_errors():
        from featstore import open_store
        from featstore.datasets import set_default_view

        fs = open_store(store, mode="a")
        manifest = set_default_view(fs.manifest(name), view)
        fs.write_manifest(name, manifest, attrs=manifest.attrs)
    if as_json:
        print_json({"dataset": name, "default_view": view})
        return
    typer.echo(f"{name}:SPLIT now selects view {view!r}")


@app.command("silence")
def measure_silence(
    name: str = typer.Argument(..., help="Dataset name in the store."),
    store: str = STORE,
    workers: int = typer.Option(4, "--workers", "-w", min=1, help="Videos decoded at once."),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        show_default="only those without one",
        help="Measure every video again.",
    ),
    max_problems: int = typer.Option(20, "--max-problems", help="Failures to print."),
    progress_every_s: float = every_s_option(),
    progress_every: int = every_items_option(),
    as_json: bool = json_option("the summary (measured, skipped, failed, statistics, failures)"),
) -> None:
    """Measure each video's leading silence into the manifest column leading_silence_s.

    AVH-Align's optional trim (`--trim-silence` in `train sync` / `syncscore`)
    needs it: silence = time until the first |sample| > 0.0005. Decodes audio
    only; re-running resumes, videos that fail get NaN.
    """
    with user_errors():
        from featstore import open_store
        from featstore.silence import measure_store_silence

        fs = open_store(store, mode="a")
        try:
            with progress(
                f"silence {name}", every=Every(progress_every_s, progress_every)
            ) as shown:
                failed = 0

                def on_progress(done: int, total: int, result: Any) -> None:
                    nonlocal failed
                    failed += 0 if result.ok else 1
                    shown.update(done, total, f"{failed} failed")

                summary = measure_store_silence(
                    fs, name, workers=workers, overwrite=overwrite, progress=on_progress
                )
        except KeyboardInterrupt:
            typer.secho(
                "interrupted: measured videos are saved; run the same command to resume",
                err=True,
                fg=typer.colors.YELLOW,
            )
            raise typer.Exit(code=EXIT_INTERRUPTED) from None
    if as_json:
        print_json({"dataset": name, **dataclasses.asdict(summary)})
        return
    stats = (
        "-"
        if math.isnan(summary.mean_s)
        else f"mean {summary.mean_s:.3f} s, max {summary.max_s:.3f} s over the dataset"
    )
    typer.echo(
        f"{name}: measured {summary.measured}, skipped {summary.skipped} (already measured), "
        f"failed {summary.failed}; leading silence {stats}"
    )
    if summary.silent_throughout:
        typer.echo(f"{summary.silent_throughout} video(s) are silent throughout")
    if summary.failures:
        typer.echo(f"{summary.failed} video(s) failed (NaN; tried again on the next run):")
        shown = list(summary.failures.items())[:max_problems]
        for video_id, reason in shown:
            typer.echo(f"  {video_id}: {reason}")
        if summary.failed > len(shown):
            typer.echo(f"  ... and {summary.failed - len(shown)} more")


ASD_NAMES = ("talknet", "sync")  # literal for a fast --help; a test checks the registry


@app.command("segment")
def segment_dataset(
    name: str = typer.Argument(..., help="Source dataset name in the store."),
    store: str = STORE,
    min_s: float = typer.Option(3.0, "--min-s", help="Shortest segment kept (seconds)."),
    max_s: float = typer.Option(60.0, "--max-s", help="Longer spans are cut into equal parts."),
    min_face_px: float = typer.Option(100.0, "--min-face-px", help="Smallest face box side kept."),
    max_gap_s: float = typer.Option(
        0.5, "--max-gap-s", help="Pauses of one speaker kept inside a segment (seconds)."
    ),
    asd: str | None = typer.Option(
        None,
        "--asd",
        show_default="talknet when its checkpoint is found, else sync, said on stderr",
        help=f"Active speaker detector: {' or '.join(ASD_NAMES)}.",
    ),
    checkpoint: str | None = typer.Option(
        None,
        "--checkpoint",
        show_default="pretrain_TalkSet.model in $FEATSTORE_CHECKPOINTS",
        help="TalkNet checkpoint.",
    ),
    device: str = typer.Option("cpu", "--device", help="Device for TalkNet (cpu, cuda, cuda:N)."),
    workers: int = typer.Option(1, "--workers", "-w", min=1, help="Videos processed at once."),
    as_name: str | None = typer.Option(
        None, "--as", show_default="NAME-segments", help="Name of the segment dataset."
    ),
    max_problems: int = typer.Option(20, "--max-problems", help="Failures to print."),
    progress_every_s: float = every_s_option(),
    progress_every: int = every_items_option(),
    as_json: bool = json_option("the summary (videos, segments, hours kept, drops, failures)"),
) -> None:
    """Cut a dataset's videos into single-speaker segments (paper Supp. C) as a new dataset.

    Shots, face tracks per shot and an active speaker per track; a span is kept when the
    video has audio, exactly one tracked face speaks in every frame, the face is at least
    --min-face-px and the span lasts --min-s to --max-s. Re-running resumes.
    """
    with user_errors():
        from featstore import open_store
        from featstore.asd.analysis import AnalysisConfig
        from featstore.asd.detectors import load_detector
        from featstore.datasets.segments import build_segment_dataset
        from featstore.segments import SegmentRules

        rules = SegmentRules(min_s=min_s, max_s=max_s, min_face_px=min_face_px, max_gap_s=max_gap_s)
        if asd is None:
            asd = _default_asd(checkpoint)
        detector = load_detector(asd, checkpoint=checkpoint, device=device)
        target = as_name or f"{name}-segments"
        fs = open_store(store, mode="a")
        try:
            with progress(
                f"segment {name}", every=Every(progress_every_s, progress_every)
            ) as shown:
                found = failed = 0

                def on_progress(done: int, total: int, result: Any) -> None:
                    nonlocal found, failed
                    found += len(result.rows)
                    failed += 0 if result.ok else 1
                    shown.update(done, total, f"{found} segments, {failed} failed")

                summary = build_segment_dataset(
                    fs,
                    name,
                    target,
                    detector,
                    config=AnalysisConfig(rules=rules),
                    workers=workers,
                    progress=on_progress,
                )
        except KeyboardInterrupt:
            typer.secho(
                "interrupted: processed videos are saved; run the same command to resume",
                err=True,
                fg=typer.colors.YELLOW,
            )
            raise typer.Exit(code=EXIT_INTERRUPTED) from None
    if as_json:
        print_json({"dataset": target, "source": name, **dataclasses.asdict(summary)})
        return
    typer.echo(
        f"{target}: {summary.videos_in} videos in ({summary.processed} processed, "
        f"{summary.skipped} done before, {summary.failed} failed); "
        f"{summary.segments_out} segments, {summary.hours_kept:.3f} h kept "
        f"of {summary.hours_in:.3f} h"
    )
    typer.echo(
        "dropped: "
        + ", ".join(
            f"{reason} {seconds:.1f} s ({summary.dropped_spans.get(reason, 0)} spans)"
            for reason, seconds in summary.dropped_s.items()
        )
    )
    if summary.failures:
        typer.echo(f"{summary.failed} video(s) failed (tried again on the next run):")
        for video_id, reason in list(summary.failures.items())[:max_problems]:
            typer.echo(f"  {video_id}: {reason}")


def _default_asd(checkpoint: str | None) -> str:
    from featstore.asd.talknet.weights import find_talknet_checkpoint
    from featstore.encoders.base import CheckpointError

    try:
        find_talknet_checkpoint(checkpoint)
    except CheckpointError as exc:
        if checkpoint is not None:
            raise
        typer.secho(
            f"no TalkNet checkpoint ({exc}); using the weight-free --asd sync",
            err=True,
            fg=typer.colors.YELLOW,
        )
        return "sync"
    return "talknet"
