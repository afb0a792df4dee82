"""``featstore extract``: run an encoder over a dataset's videos into the store."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import typer

from featstore.cli.errors import EXIT_INTERRUPTED, EXIT_VIDEOS_FAILED, user_errors
from featstore.cli.group import deprecated_aliases
from featstore.cli.options import store_option
from featstore.cli.progress import Every, every_items_option, every_s_option, progress
from featstore.decode_limits import (
    DEFAULT_MAX_DECODED_BYTES,
    DEFAULT_MAX_FRAME_PIXELS,
    EXTRACT_MAX_DURATION_S,
    DecodeLimits,
)
from featstore.extract.plan import DEFAULT_BATCH_FRAMES, DEFAULT_NUM_WORKERS, format_bytes


def _encoder_name(value: str) -> str:
    """``--encoder``: a name from the registry (read when parsing, so it is current)."""
    from featstore.encoders import specs

    names = list(specs())
    if value not in names:
        raise typer.BadParameter(
            f"{value!r} is not a registered encoder; choose from {', '.join(names)}"
        )
    return value


def _complete_encoder(incomplete: str) -> list[str]:
    from featstore.encoders import specs

    return [n for n in specs() if n.startswith(incomplete)]


def _dtype(value: str) -> str:
    if value not in ("float16", "float32"):
        raise typer.BadParameter(f"{value!r} is not one of float16, float32")
    return value


def parse_options(items: Sequence[str], *, trust_checkpoint: bool = False) -> dict[str, Any]:
    """``--option KEY=VALUE`` (repeated) -> loader options; VALUE is JSON when it parses
    (``3``, ``true``, ``[1, 2]``), else the text itself. ``--trust-checkpoint`` adds
    ``trust_checkpoint=True``."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise typer.BadParameter(
                f"{item!r} is not KEY=VALUE with KEY a name (e.g. pooling=cls)",
                param_hint="--option",
            )
        try:
            options[key] = json.loads(text)
        except ValueError:
            options[key] = text
    if trust_checkpoint:
        options["trust_checkpoint"] = True
    return options


def extract_selection(on: str, split: str | None = None) -> tuple[str, str | None]:
    """``--on NAME[@VIEW][:SPLIT]`` as the extraction takes it: the dataset and
    ``SPLIT``, ``@VIEW``, ``@VIEW:SPLIT`` or ``None`` (every video). ``split``: the
    deprecated ``--split``, only with a bare NAME (it warns)."""
    head, sep, split_text = on.strip().partition(":")
    name, at, view = head.partition("@")
    name, view, split_text = name.strip(), view.strip(), split_text.strip()
    if not name or (sep and not split_text) or (at and not view) or "@" in view + split_text:
        raise typer.BadParameter(
            f"{on!r} is not NAME, NAME:SPLIT, NAME@VIEW or NAME@VIEW:SPLIT", param_hint="--on"
        )
    if split is not None:
        if sep or at:
            raise typer.BadParameter(
                f"--on {on} already selects its videos; drop --split {split}", param_hint="--split"
            )
        typer.secho(
            f"warning: --split is deprecated and will be removed: use --on {name}:{split}"
            if not split.startswith("@")
            else f"warning: --split is deprecated and will be removed: use --on {name}{split}",
            err=True,
            fg=typer.colors.YELLOW,
        )
        return name, split
    split_text = "" if split_text == "*" else split_text
    if view:
        return name, f"@{view}:{split_text}" if split_text else f"@{view}"
    return name, split_text or None


def decode_limits(
    max_duration_s: float, max_frame_pixels: int, max_decode_mb: float
) -> DecodeLimits:
    """The ``--max-*`` options as :class:`DecodeLimits` (0 lifts a bound; negative is an error)."""
    return DecodeLimits(
        max_duration_s=max_duration_s or None,
        max_frame_pixels=max_frame_pixels or None,
        max_decoded_bytes=round(max_decode_mb * 2**20) or None,
    )


@deprecated_aliases({"--dataset": "--on"})
def extract_command(
    encoder: str = typer.Option(
        ...,
        "--encoder",
        "-e",
        parser=_encoder_name,
        autocompletion=_complete_encoder,
        metavar="NAME",
        help="A registered encoder (featstore encoders list).",
    ),
    on: str = typer.Option(
        ...,
        "--on",
        metavar="NAME[@VIEW][:SPLIT]",
        help="Videos to extract: a dataset in the store, a view's or a split's videos "
        "(bare NAME: every video of the dataset's default view, or of the dataset).",
    ),
    store: str = store_option(),
    checkpoint: str | None = typer.Option(
        None, "--checkpoint", help="Local path or Hugging Face id in the local cache."
    ),
    random_init: bool = typer.Option(
        False, "--random-init", help="The checkpoint's architecture with random weights."
    ),
    store_as: str | None = typer.Option(
        None,
        "--store-as",
        metavar="NAME",
        help="Store the features under this encoder name (e.g. clip-random for --random-init).",
    ),
    trust_checkpoint: bool = typer.Option(
        False,
        "--trust-checkpoint",
        help="Unpickle the checkpoint with full torch.load: runs any code in the file; "
        "only for files you trust.",
    ),
    option: list[str] = typer.Option(
        [],
        "--option",
        metavar="KEY=VALUE",
        help="An encoder loader option (repeatable); VALUE is read as JSON when it parses.",
    ),
    layers: str = typer.Option("last", "--layers", help="last | all | a list such as 0,6,12."),
    dtype: str = typer.Option(
        "float16",
        "--dtype",
        parser=_dtype,
        metavar="float16|float32",
        help="Stored dtype (on CUDA also the autocast compute dtype).",
    ),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
    batch_frames: int = typer.Option(
        DEFAULT_BATCH_FRAMES, "--batch-frames", help="Padded 25 fps frames per forward pass."
    ),
    num_workers: int = typer.Option(
        DEFAULT_NUM_WORKERS, "--num-workers", help="Decode threads (0: decode inline)."
    ),
    split: str | None = typer.Option(
        None, "--split", hidden=True, help="Deprecated: --on NAME:SPLIT or NAME@VIEW:SPLIT."
    ),
    limit: int | None = typer.Option(
        None, "--limit", "-n", help="Only the first N videos (of the selection)."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print what would run and its store size; write nothing."
    ),
    cluster: str | None = typer.Option(
        None, "--cluster", help="Run on Dask: 'local' or a scheduler address tcp://HOST:PORT."
    ),
    n_workers: int = typer.Option(2, "--n-workers", help="Worker processes for --cluster local."),
    max_duration_s: float = typer.Option(
        EXTRACT_MAX_DURATION_S,
        "--max-duration-s",
        help="A video lasting longer fails (checked on its header and while decoding); 0: no "
        "limit.",
    ),
    max_frame_pixels: int = typer.Option(
        DEFAULT_MAX_FRAME_PIXELS,
        "--max-frame-pixels",
        show_default="3840x2160",
        help="A video whose frames have more pixels fails; 0: no limit.",
    ),
    max_decode_mb: float = typer.Option(
        DEFAULT_MAX_DECODED_BYTES / 2**20,
        "--max-decode-mb",
        help="A video whose decoded frames + audio take more MiB fails (bounds the memory "
        "per video); 0: no limit.",
    ),
    as_json: bool = typer.Option(
        False,
        "--json",
        help="Print the summary (or the --dry-run plan) as JSON on stdout; progress and the "
        "failures' reasons stay on stderr.",
    ),
    progress_every_s: float = every_s_option(),
    progress_every: int = every_items_option(),
    fail_on_error: bool = typer.Option(
        False,
        "--fail-on-error",
        help=f"Exit with {EXIT_VIDEOS_FAILED} when any video failed (for pipelines); the "
        "features of the others are committed all the same.",
    ),
) -> None:
    """Extract an encoder's per-frame features of a dataset into the store (resumable).

    A video that fails is recorded in the store and skipped; the summary gives the
    most common reasons (`featstore store failures` lists them all).
    """
    import time

    from featstore.extract import extract, plan_extraction

    options = parse_options(option, trust_checkpoint=trust_checkpoint)
    dataset, split = extract_selection(on, split)
    with user_errors():
        limits = decode_limits(max_duration_s, max_frame_pixels, max_decode_mb)
        if dry_run:
            plan = plan_extraction(
                store,
                dataset=dataset,
                encoder=encoder,
                checkpoint=checkpoint,
                random_init=random_init,
                layers=layers,
                dtype=dtype,
                split=split,
                limit=limit,
                store_as=store_as,
                encoder_options=options,
                decode_limits=limits,
            )
            if as_json:
                typer.echo(json.dumps(_plan_dict(plan), indent=2))
            else:
                _print_plan(plan)
            return
        started_ns = time.time_ns()
        label = f"extract {_label(encoder, store_as)} on {on}"
        every = Every(seconds=progress_every_s, items=progress_every)
        try:
            with progress(label, every=every) as shown:

                def on_progress(p: Any) -> None:
                    detail = f"{p.videos_failed} failed, {p.frames_per_s:.0f} frames/s"
                    shown.update(p.videos_finished, p.videos_total, detail)

                summary = extract(
                    store,
                    dataset=dataset,
                    encoder=encoder,
                    checkpoint=checkpoint,
                    random_init=random_init,
                    layers=layers,
                    dtype=dtype,
                    device=device,
                    batch_frames=batch_frames,
                    num_workers=num_workers,
                    split=split,
                    limit=limit,
                    on_progress=on_progress,
                    cluster=cluster,
                    n_workers=n_workers,
                    store_as=store_as,
                    encoder_options=options,
                    decode_limits=limits,
                )
        except KeyboardInterrupt:
            typer.secho(
                "interrupted: finished videos are committed; run the same command to resume",
                err=True,
                fg=typer.colors.YELLOW,
            )
            raise typer.Exit(code=EXIT_INTERRUPTED) from None
    if not as_json:
        typer.echo(
            f"{_label(encoder, store_as)} on {dataset}: {summary.videos_done} videos extracted, "
            f"{summary.videos_skipped} already in the store, {summary.videos_failed} failed; "
            f"{summary.frames} frames in {summary.seconds:.1f} s "
            f"({summary.frames_per_s:.1f} frames/s); "
            f"{format_bytes(summary.bytes_written)} written in {summary.parts_written} parts"
        )
    report = None
    if summary.videos_failed:
        report = _print_failures(
            store, dataset, store_as or encoder, summary.videos_failed, started_ns
        )
    if as_json:
        doc = {
            "dataset": dataset,
            "selection": on,
            "encoder": store_as or encoder,
            "source_encoder": encoder,
            **dataclasses.asdict(summary),
            "frames_per_s": summary.frames_per_s,
            "failure_groups": [] if report is None else report.to_dict()["groups"],
        }
        typer.echo(json.dumps(doc, indent=2))
    if summary.videos_failed and fail_on_error:
        raise typer.Exit(code=EXIT_VIDEOS_FAILED)


# Failure records carry their writer's clock: allow for workers whose clock is behind.
_CLOCK_SLACK_NS = 60 * 10**9
_REASONS_SHOWN = 5


def _print_failures(
    store: str, dataset: str, encoder: str, failed: int, started_ns: int
) -> Any | None:
    """The most common reasons of this run's failures, a few videos each, and the
    command that lists them all (on stderr, after the summary line); returns the
    :class:`featstore.failures.FailureReport` (None when unreadable)."""
    import shlex

    from featstore.errors import FeatstoreError
    from featstore.failures import collect_failures
    from featstore.store import open_store

    def say(text: str) -> None:
        typer.secho(text, err=True, fg=typer.colors.YELLOW)

    listing = shlex.join(
        ["featstore", "store", "failures", store, "--dataset", dataset, "--encoder", encoder]
    )
    say(f"{failed} videos failed (recorded in the store, retried by the next run):")
    try:
        report = collect_failures(
            open_store(store, mode="r"),
            dataset=dataset,
            encoder=encoder,
            since_ns=started_ns - _CLOCK_SLACK_NS,
        )
    except (FeatstoreError, OSError) as exc:  # the summary must not hide the result
        say(f"  (could not read the reasons: {exc})")
        report = None
    if report is not None:
        for g in report.groups[:_REASONS_SHOWN]:
            message = " ".join(g.message.split())
            if len(message) > 160:
                message = message[:159] + "…"
            more = f" +{g.videos - len(g.examples)} more" if g.videos > len(g.examples) else ""
            say(f"  {g.videos:>5} {g.error_type}: {message}")
            say(f"        e.g. {', '.join(g.examples)}{more}")
        rest = len(report.groups) - _REASONS_SHOWN
        if rest > 0:
            say(f"  ... and {rest} other error types")
    say(f"all of them: {listing}")
    return report


def _label(encoder: str, store_as: str | None) -> str:
    """``clip-random (clip)`` when stored under another name, else ``clip``."""
    return f"{store_as} ({encoder})" if store_as and store_as != encoder else encoder


def _plan_dict(plan: Any) -> dict[str, Any]:
    """``extract --dry-run --json``: the plan without its list of videos."""
    from featstore.layout import layer_key

    return {
        "dry_run": True,
        "dataset": plan.dataset,
        "encoder": plan.stored_name,
        "source_encoder": plan.encoder,
        "checkpoint": plan.checkpoint,
        "frame_hz": plan.frame_hz,
        "dtype": plan.dtype,
        "videos_selected": plan.videos_selected,
        "videos_skipped": plan.videos_skipped,
        "videos_to_run": plan.videos_to_run,
        "frames": plan.frames,
        "unknown_duration": plan.unknown_duration,
        "layers": [
            {"layer": layer_key(e.layer), "dim": e.dim, "rows": e.rows, "bytes": e.bytes}
            for e in plan.layers
        ],
        "bytes_total": plan.bytes_total,
        "warnings": list(plan.warnings),
    }


def _print_plan(plan: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    from featstore.layout import layer_key
    from featstore.timebase import frames_to_seconds

    console = Console()
    console.print(
        f"dry run: {_label(plan.encoder, plan.store_as)} on {plan.dataset}: {plan.videos_to_run} videos to extract "
        f"({plan.videos_selected} selected, {plan.videos_skipped} already in the store), "
        f"about {plan.frames} frames ({frames_to_seconds(plan.frames) / 3600:.2f} h) at {plan.frame_hz:g} Hz, "
        f"stored as {plan.dtype}"
    )
    table = Table("layer", "dim", "rows", "size")
    for e in plan.layers:
        table.add_row(layer_key(e.layer), str(e.dim), str(e.rows), format_bytes(e.bytes))
    table.add_row("total", "", "", format_bytes(plan.bytes_total), style="bold")
    console.print(table)
    for warning in plan.warnings:
        typer.secho(f"warning: {warning}", err=True, fg=typer.colors.YELLOW)
