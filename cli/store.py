"""``featstore store info|ls|failures|verify|gc|compact|rm [URL]``: inspect and maintain a store.

``URL`` may be left out when ``FEATSTORE_STORE`` names the store (``featstore.cli.options``).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import typer

from featstore.cli.errors import fail, user_errors
from featstore.cli.options import STORE_ENV, shift_store
from featstore.cli.output import json_option, print_json
from featstore.cli.progress import progress

app = typer.Typer(help="Inspect and maintain a feature store.", no_args_is_help=True)

URL = typer.Argument(
    None,
    metavar="[URL]",
    show_default=f"${STORE_ENV}",
    help="Store location: a local path or an fsspec URL (s3://...).",
)


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PB"  # pragma: no cover


def _console() -> Any:
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # pipes and logs: do not squeeze tables into 80 columns
        console = Console(width=max(console.width, 132))
    return console


@app.command()
def info(
    url: str = URL,
    dataset: str | None = typer.Option(None, "--dataset", "-d", help="Only this dataset."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Datasets, encoders, layers, videos, rows, bytes and failures."""
    url, _ = shift_store(url, [], names=[], required=0)
    with user_errors():
        from featstore.maintenance import summarize
        from featstore.store import open_store

        summary = summarize(open_store(url, mode="r"), dataset)
    if as_json:
        typer.echo(json.dumps(dataclasses.asdict(summary), indent=2, default=str))
        return
    from rich.table import Table

    console = _console()
    console.print(
        f"[bold]{summary.url}[/bold]: {len(summary.datasets)} datasets, "
        f"{summary.files} files, {_human(summary.bytes)}"
    )
    if not summary.datasets:
        console.print("(empty store)")
    for ds in summary.datasets:
        rows = (
            "no manifest" if ds.manifest_rows is None else f"{ds.manifest_rows} videos in manifest"
        )
        console.print(f"\n[bold]{ds.name}[/bold] ({rows})")
        if not ds.encoders:
            console.print("  no features")
            continue
        table = Table(show_edge=False, pad_edge=False)
        for col in (
            "encoder",
            "layer",
            "dim",
            "videos",
            "rows",
            "Hz",
            "dtype",
            "parts",
            "size",
            "failed",
        ):
            table.add_column(
                col, justify="left" if col in ("encoder", "layer", "dtype") else "right"
            )
        for enc in ds.encoders:
            first = True
            for layer in enc.layers or ():
                table.add_row(
                    enc.name if first else "",
                    layer.layer,
                    str(layer.dim),
                    str(layer.videos),
                    str(layer.rows),
                    f"{enc.info.frame_hz:g}" if first else "",
                    enc.info.dtype if first else "",
                    (
                        f"{enc.parts}"
                        + (
                            f" (+{enc.uncommitted_parts} uncommitted)"
                            if enc.uncommitted_parts
                            else ""
                        )
                    )
                    if first
                    else "",
                    _human(enc.bytes) if first else "",
                    (f"{enc.unresolved_failures}/{enc.failures}" if enc.failures else "0")
                    if first
                    else "",
                )
                first = False
            if not enc.layers:
                table.add_row(
                    enc.name,
                    "-",
                    "-",
                    "0",
                    "0",
                    f"{enc.info.frame_hz:g}",
                    enc.info.dtype,
                    f"0 (+{enc.uncommitted_parts} uncommitted)",
                    _human(enc.bytes),
                    str(enc.failures),
                )
        console.print(table)
        for enc in ds.encoders:
            extra = []
            if enc.info.checkpoint:
                extra.append(f"checkpoint {enc.info.checkpoint}")
            if enc.info.random_init:
                extra.append("random init")
            if extra:
                console.print(f"  {enc.name}: {', '.join(extra)}")
    failed = [
        (ds.name, enc.name, enc.unresolved_failures)
        for ds in summary.datasets
        for enc in ds.encoders
        if enc.unresolved_failures
    ]
    if failed:
        console.print("")
        for ds_name, enc_name, n in failed:
            console.print(f"{ds_name}/{enc_name}: {n} videos failed and not extracted since")
        console.print(
            "reasons: "
            + _failures_command(url, *(failed[0][:2] if len(failed) == 1 else (None, None))),
            soft_wrap=True,
        )


def _failures_command(url: str, dataset: str | None, encoder: str | None) -> str:
    """The exact ``featstore store failures`` command that lists these failures."""
    import shlex

    words = ["featstore", "store", "failures", url]
    if dataset:
        words += ["--dataset", dataset]
    if encoder:
        words += ["--encoder", encoder]
    return shlex.join(words)


@app.command("ls")
def ls(
    url: str = URL,
    dataset: str | None = typer.Argument(None, help="List this dataset's encoders."),
    encoder: str | None = typer.Argument(None, help="List this encoder's videos."),
    layer: str | None = typer.Option(None, "--layer", "-l", help="Layer for the video listing."),
    limit: int = typer.Option(50, "--limit", "-n", help="At most this many videos (0 = all)."),
    as_json: bool = json_option("the listing (datasets, encoders or videos)"),
) -> None:
    """List datasets, a dataset's encoders, or an encoder's videos."""
    url, (dataset, encoder) = shift_store(
        url, [dataset, encoder], names=["DATASET", "ENCODER"], required=0
    )
    with user_errors():
        from featstore.store import open_store

        store = open_store(url, mode="r")
        if dataset is None:
            found = [(name, store.encoders(name)) for name in store.datasets()]
            if as_json:
                print_json({"datasets": [{"name": n, "encoders": e} for n, e in found]})
                return
            for name, encs in found:
                typer.echo(f"{name}\t{len(encs)} encoders: {', '.join(encs) or '-'}")
            return
        if encoder is None:
            rows = [
                (name, store.encoder_info(dataset, name).frame_hz, store.layers(dataset, name))
                for name in store.encoders(dataset)
            ]
            if as_json:
                print_json(
                    {
                        "dataset": dataset,
                        "encoders": [
                            {"name": n, "frame_hz": hz, "layers": [str(x) for x in layers]}
                            for n, hz, layers in rows
                        ],
                    }
                )
                return
            for name, hz, state_layers in rows:
                layers = ", ".join(str(x) for x in state_layers) or "-"
                typer.echo(f"{name}\t{hz:g} Hz\tlayers: {layers}")
            return
        layers = store.layers(dataset, encoder)
        chosen = layer if layer is not None else (layers[-1] if layers else "last")
        ids = store.video_ids(dataset, encoder, chosen)
        shown = ids if limit <= 0 else ids[:limit]
        locations = [(vid, store.locate(dataset, encoder, vid, chosen)) for vid in shown]
        if as_json:
            print_json(
                {
                    "dataset": dataset,
                    "encoder": encoder,
                    "layer": str(chosen),
                    "total": len(ids),
                    "videos": [
                        {"video_id": v, "n_frames": loc.n_frames, "part": loc.part_id}
                        for v, loc in locations
                    ],
                }
            )
            return
        for vid, loc in locations:
            typer.echo(f"{vid}\t{loc.n_frames} frames\tpart {loc.part_id}")
        if len(shown) < len(ids):
            typer.echo(f"... {len(ids) - len(shown)} more (use --limit 0)")


@app.command()
def verify(
    url: str = URL,
    dataset: str | None = typer.Option(None, "--dataset", "-d"),
    encoder: str | None = typer.Option(None, "--encoder", "-e"),
    no_checksums: bool = typer.Option(False, "--no-checksums", help="Check shapes only (fast)."),
    as_json: bool = json_option("the parts and rows checked and every problem"),
) -> None:
    """Check every committed part against its commit record; exit 1 on any problem."""
    url, _ = shift_store(url, [], names=[], required=0)
    with user_errors():
        from featstore.maintenance import verify as run_verify
        from featstore.store import open_store

        report = run_verify(open_store(url, mode="r"), dataset, encoder, checksums=not no_checksums)
    if as_json:
        print_json(
            {
                "ok": report.ok,
                "parts": report.parts,
                "rows": report.rows,
                "problems": [str(p) for p in report.problems],
            }
        )
        if not report.ok:
            raise typer.Exit(code=1)
        return
    for problem in report.problems:
        typer.secho(f"problem: {problem}", err=True, fg=typer.colors.RED)
    typer.echo(
        f"checked {report.parts} parts, {report.rows} rows: "
        + ("ok" if report.ok else f"{len(report.problems)} problems")
    )
    if not report.ok:
        raise typer.Exit(code=1)


@app.command("gc")
def gc_command(
    url: str = URL,
    dataset: str | None = typer.Option(None, "--dataset", "-d"),
    encoder: str | None = typer.Option(None, "--encoder", "-e"),
    older_than: float = typer.Option(
        3600.0,
        "--older-than",
        help="Seconds: only remove uncommitted parts older than this (a writer may still be at "
        "work on younger ones). Nothing younger than gc's floor (10 minutes) is ever removed, "
        "whatever this says.",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be removed."),
    as_json: bool = json_option("what was (or would be) removed"),
) -> None:
    """Remove uncommitted parts left by crashed writers and fully superseded parts."""
    url, _ = shift_store(url, [], names=[], required=0)
    with user_errors():
        from featstore.maintenance import gc
        from featstore.store import open_store

        report = gc(
            open_store(url, mode="a"), dataset, encoder, older_than_s=older_than, dry_run=dry_run
        )
    if as_json:
        print_json({"dry_run": dry_run, **dataclasses.asdict(report)})
        return
    verb = "would remove" if dry_run else "removed"
    for label, items in (
        ("uncommitted part", report.removed_uncommitted),
        ("superseded part", report.removed_superseded),
        ("unreadable commit record", report.removed_broken_commits),
        ("unreadable failure record", report.removed_broken_failures),
        ("temporary file", report.removed_temporaries),
        ("old manifest version", report.removed_manifest_versions),
    ):
        for item in items:
            typer.echo(f"{verb} {label} {item}")
    for item in report.withdrawn_commits:
        typer.secho(
            f"withdrew the commit of {item}: its writer committed while gc removed the part "
            "(re-run its extraction)",
            err=True,
            fg=typer.colors.YELLOW,
        )
    typer.echo(
        f"{verb} {len(report.removed_uncommitted)} uncommitted and "
        f"{len(report.removed_superseded)} superseded parts ({_human(report.bytes_freed)})"
        + (f"; kept {report.kept_recent} recent uncommitted parts" if report.kept_recent else "")
    )


@app.command()
def compact(
    url: str = URL,
    dataset: str = typer.Argument(None, metavar="DATASET", help="Dataset to compact."),
    encoder: str = typer.Argument(None, metavar="ENCODER", help="Encoder to compact."),
    target_mb: float = typer.Option(128.0, "--target-mb", help="Target part size per layer (MiB)."),
    as_json: bool = json_option("the parts merged and written"),
) -> None:
    """Merge many small parts into few large ones; readers never see a gap."""
    url, (dataset, encoder) = shift_store(
        url, [dataset, encoder], names=["DATASET", "ENCODER"], required=2
    )
    with user_errors():
        from featstore.maintenance import compact as run_compact
        from featstore.store import open_store

        with progress(f"compact {dataset}/{encoder}", noun="parts") as shown:
            report = run_compact(
                open_store(url, mode="a"),
                dataset,
                encoder,
                target_part_bytes=int(target_mb * 2**20),
                progress=lambda done, total: shown.update(done, total),
            )
    if as_json:
        print_json({"dataset": dataset, "encoder": encoder, **dataclasses.asdict(report)})
        return
    if not report.merged:
        typer.echo(f"nothing to compact: {report.parts_before} parts")
        return
    typer.echo(
        f"merged {len(report.merged)} parts into {len(report.written)} "
        f"({report.rows} rows); {report.parts_before} -> {report.parts_after} parts"
    )


@app.command("failures")
def failures_command(
    url: str = URL,
    dataset: str | None = typer.Option(None, "--dataset", "-d", help="Only this dataset."),
    encoder: str | None = typer.Option(None, "--encoder", "-e", help="Only this encoder."),
    limit: int = typer.Option(
        50, "--limit", "-n", help="Show at most this many videos (0 = all); counts cover all."
    ),
    include_resolved: bool = typer.Option(
        False, "--resolved", help="Also list videos that failed once and were extracted since."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (every failure, no limit)."),
) -> None:
    """Why videos failed to extract: counts by error type, then each video's newest error."""
    url, _ = shift_store(url, [], names=[], required=0)
    with user_errors():
        from featstore.failures import collect_failures
        from featstore.store import open_store

        report = collect_failures(
            open_store(url, mode="r"),
            dataset=dataset,
            encoder=encoder,
            include_resolved=include_resolved,
        )
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    where = "/".join(x for x in (dataset, encoder) if x) or url
    if not report.failures:
        resolved = f" ({report.resolved} resolved by a later run)" if report.resolved else ""
        typer.echo(f"no failed videos in {where}{resolved}")
        return
    from rich.table import Table

    console = _console()
    counts = Table(title=f"failed videos in {where}: {len(report.failures)}", show_edge=False)
    for col in ("error type", "videos", "e.g.", "message (newest)"):
        counts.add_column(col, justify="right" if col == "videos" else "left", overflow="fold")
    for g in report.groups:
        counts.add_row(g.error_type, str(g.videos), ", ".join(g.examples), _one_line(g.message))
    console.print(counts)
    shown = report.failures if limit <= 0 else report.failures[:limit]
    table = Table(show_edge=False)
    columns = ("video", "dataset/encoder", "error type", "message", "when (UTC)", "part")
    for col in (*columns, *(("resolved",) if include_resolved else ())):
        table.add_column(col, overflow="fold")
    for f in shown:
        table.add_row(
            f.video_id,
            f"{f.dataset}/{f.encoder}",
            f.error_type,
            _one_line(f.message),
            f.when.replace("+00:00", ""),
            f.part_id,
            *(("yes" if f.resolved else "no",) if include_resolved else ()),
        )
    console.print(table)
    if len(shown) < len(report.failures):
        typer.echo(f"... {len(report.failures) - len(shown)} more (use --limit 0 or --json)")
    if report.resolved and not include_resolved:
        typer.echo(f"({report.resolved} more failed once and were extracted since: --resolved)")


def _one_line(message: str, width: int = 200) -> str:
    text = " ".join(message.split())
    return text if len(text) <= width else text[: width - 1] + "…"


@app.command("rm")
def rm_command(
    url: str = URL,
    dataset: str = typer.Argument(None, metavar="DATASET", help="Dataset holding the encoder."),
    encoder: str = typer.Argument(None, metavar="ENCODER", help="Encoder (stored name) to remove."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Say what would be removed; remove nothing."
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print what was (or would be) removed as JSON."
    ),
) -> None:
    """Remove one encoder's stored features from a dataset (e.g. one stored by mistake).

    Readers never see part of it: the encoder is marked as going before any commit
    record is removed, and readers refuse a marked encoder. Stop extractions writing
    it first. Without --yes it asks on a terminal and refuses otherwise.
    """
    url, (dataset, encoder) = shift_store(
        url, [dataset, encoder], names=["DATASET", "ENCODER"], required=2
    )
    with user_errors():
        from featstore.removal import plan_removal, remove_encoder
        from featstore.store import open_store

        store = open_store(url, mode="r" if dry_run else "a")
        plan = plan_removal(store, dataset, encoder)
        what = (
            f"{dataset}/{encoder} in {url}: {plan.videos} videos, layers "
            f"{', '.join(plan.layers) or '-'}; {plan.commits} commit records, {plan.parts} parts, "
            f"{plan.failure_records} failure records, {plan.files} files, {_human(plan.bytes)}"
            + (" (finishing an interrupted removal)" if plan.resumed else "")
        )
        if dry_run:
            if as_json:
                typer.echo(json.dumps({**dataclasses.asdict(plan), "removed": False}, indent=2))
            else:
                typer.echo(f"would remove {what}")
            return
        if not yes:
            import sys

            if not sys.stdin.isatty():
                fail(
                    f"refusing to remove {dataset}/{encoder} without --yes (not a terminal); "
                    "see what would go with --dry-run"
                )
            typer.echo(f"about to remove {what}")
            if not typer.confirm("remove it?", default=False):
                fail("nothing removed")
        remove_encoder(store, dataset, encoder)
    if as_json:
        typer.echo(json.dumps({**dataclasses.asdict(plan), "removed": True}, indent=2))
    else:
        typer.echo(f"removed {what}")
