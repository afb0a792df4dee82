"""``featstore train probe | ntp | sync``: fit a detector on stored features, write its run.

``probe`` is the paper's linear probe (real and fake videos); ``ntp`` (next-token
prediction) and ``sync`` (AVH-Align) are trained on real videos only. Each prints
one line per epoch (``--quiet``: none; ``--epoch-every N``: every N-th; ``--json``:
on stderr) and writes a run directory that ``featstore eval`` reads. The
commands call the run kinds' ``train`` (``featstore.trainers.kinds``). ``--cache-gb`` bounds the
memory they hold videos in; larger sets stream from the store (``featstore.trainers.memory``). Features may be
feature sets: ``--encoder avhubert-a+avhubert-v`` or a repeated ``--encoder``.
Options may come from a TOML/YAML file (``--config``, ``featstore.cli.config_file``); where
each came from is recorded in the run's ``config.json`` (``invocation``), with the
TensorBoard folder when ``--tensorboard`` logs the training curves.
Every command takes ``--val-fraction`` (a seeded, grouped validation holdout),
``--checkpoint-every N`` and ``--resume RUN_DIR``; Ctrl-C or SIGTERM saves the
best-so-far run and prints one line saying where (``featstore.trainers.kinds.fitting``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import typer

from featstore.cli.config_file import config_option, invocation
from featstore.cli.errors import EXIT_INTERRUPTED, user_errors
from featstore.cli.options import complete_features, store_option

app = typer.Typer(help="Train detectors on stored features.", no_args_is_help=True)

# Options every trainer takes, declared once.
STORE = store_option()
OUT = typer.Option(
    None, "--out", "-o", help="Run directory to write (required unless --resume names it)."
)
NO_VAL = typer.Option(False, "--no-val", help="Train without validation (no early stop).")
VAL_FRACTION = typer.Option(
    None,
    "--val-fraction",
    metavar="F",
    help="Validate on this fraction of the training videos instead of the dataset's val split: "
    "a seeded draw per label, whole identities (or source videos of segments) at a time; "
    "recorded in the run config.",
)
VAL_SEED = typer.Option(
    None, "--val-seed", show_default="43", help="Seed of --val-fraction's draw."
)
CHECKPOINT_EVERY = typer.Option(
    None,
    "--checkpoint-every",
    metavar="N",
    help="Checkpoint the training into the run directory every N epochs (atomic writes), so "
    "that --resume can continue it.",
)
RESUME = typer.Option(
    None,
    "--resume",
    metavar="RUN_DIR",
    help="Continue the training checkpointed in RUN_DIR (give the options it was started "
    "with); ends as the uninterrupted training would have. Implies --out RUN_DIR.",
)
SEED = typer.Option(None, "--seed", show_default="43", help="Random seed.")
DEVICE = typer.Option(None, "--device", help="torch device (cpu, cuda, ...).")
OVERWRITE = typer.Option(False, "--overwrite", help="Replace a complete run at --out.")
ALLOW_MISSING = typer.Option(
    False, "--allow-missing", help="Skip videos without stored features (warn) instead of failing."
)
NO_L2 = typer.Option(False, "--no-l2", help="Do not L2-normalise frames.")
CONFIG = config_option()
QUIET = typer.Option(False, "--quiet", "-q", help="Print no epoch lines: only the result.")
EPOCH_EVERY = typer.Option(
    1, "--epoch-every", min=1, metavar="N", help="Print every N-th epoch's line."
)
AS_JSON = typer.Option(
    False,
    "--json",
    help="Print the run (path, kind, config.json) as JSON on stdout; epoch lines go to stderr.",
)
TENSORBOARD = typer.Option(
    None,
    "--tensorboard",
    metavar="DIR",
    help="Also log the training curves (loss, validation loss/AUC, lr) for TensorBoard in "
    "DIR (needs the tensorboard package: the 'tensorboard' extra).",
)
FEATURES_HELP = (
    "ENCODER[:LAYER]; several joined by '+' (or the option repeated) are read together, "
    "concatenated per frame (a feature set)"
)
CACHE_GB = typer.Option(
    None,
    "--cache-gb",
    min=0.0,
    metavar="GIB",
    show_default="half the machine's memory",
    help="Memory budget (GiB) for holding the training, then validation, videos; what does "
    "not fit is streamed from the store batch by batch, to the same model.",
)
FRAME_HZ = typer.Option(
    None,
    "--frame-hz",
    help="Read the features at this rate (needed when a feature set mixes rates; slower rows "
    "are repeated).",
)


def _fit_line(cfg: Any, reals: bool) -> str:
    """``best epoch B of E (stopped early); trained on ..., validated on ...``."""
    fit = cfg["fit"]
    val = cfg.get("val")
    val_text = val["selection"] if val else "none"
    if val and val.get("holdout"):
        held = val["holdout"]
        val_text = (
            f"{val['n']} videos held out of {held['from']} ({held['fraction']:.0%}, seed "
            f"{held['seed']}, by {held['group_by']})"
        )
    trained = (
        f"{cfg['train']['n_real']} real videos of {cfg['train']['selection']}"
        if reals
        else f"{cfg['train']['selection']} ({cfg['train']['n']} videos)"
    )
    return (
        f"best epoch {fit['best_epoch']} of {fit['epochs']}"
        + (" (stopped early)" if fit["stopped_early"] else "")
        + f"; trained on {trained}, validated on {val_text}"
    )


def card_lines(cfg: Any) -> list[str]:
    """What the run's card says: its frame threshold and the windows of its training lengths."""
    from featstore.trainers.runcard import RunCard

    card = RunCard.from_doc(cfg)
    lines = [f"frame threshold: {card.localization.describe()}"]
    if card.lengths is not None:
        p = card.lengths
        lines.append(
            f"training lengths {p.seconds(p.min_rows):.2f}-{p.seconds(p.max_rows):.2f} s "
            f"(median {p.seconds(p.median_rows):.2f} s): longer inputs are scored in windows "
            f"of {p.seconds(p.median_rows):.2f} s (the median)"
        )
    return lines


def format_epoch(stats: Any) -> str:
    """One progress line: epoch, train loss, val loss, val AUC, seconds."""

    def num(value: Any, fmt: str) -> str:
        return "-" if value is None or value != value else format(value, fmt)

    return (
        f"epoch {stats.epoch:>3}  loss {num(stats.train_loss, '.4f')}  "
        f"val loss {num(stats.val_loss, '.4f')}  val AUC {num(stats.val_auc, '.4f')}  "
        f"{stats.seconds:.1f}s"
    )


def _config(default: Any, **overrides: Any) -> Any:
    """``default`` with the options the user gave (``None``: not given) replaced."""
    return dataclasses.replace(default, **{k: v for k, v in overrides.items() if v is not None})


@contextlib.contextmanager
def _recording(
    ctx: typer.Context, tensorboard: Path | None, show: Callable[[Any], None]
) -> Iterator[Callable[[Any], None]]:
    """The epoch callback (``show``, and TensorBoard with ``--tensorboard``) and the record
    of where the options came from, written into the run's config (``invocation``)."""
    from featstore.trainers.runs import recorded_invocation

    doc = invocation(ctx)
    curves = None
    if tensorboard is not None:
        from featstore.trainers.curves import open_curves

        curves = open_curves(tensorboard)  # before training: a missing package fails now
        doc["tensorboard"] = str(tensorboard)

    def on_epoch(stats: Any) -> None:
        show(stats)
        if curves is not None:
            curves.log(stats)

    try:
        with recorded_invocation(doc):
            yield on_epoch
    finally:
        if curves is not None:
            curves.close()


def epoch_printer(
    line: Callable[[Any], str], *, quiet: bool, every: int, to_stderr: bool = False
) -> Callable[[Any], None]:
    """The epoch callback of ``--quiet`` / ``--epoch-every N``: ``line(stats)`` for every
    N-th epoch (on stderr with ``--json``, whose stdout holds only the result)."""

    def show(stats: Any) -> None:
        if not quiet and stats.epoch % every == 0:
            typer.echo(line(stats), err=to_stderr)

    return show


def format_sync_epoch(stats: Any) -> str:
    """One progress line of ``train sync``: epoch, train loss, val loss, lr, seconds."""
    val_loss = "-" if stats.val_loss is None else f"{stats.val_loss:.4f}"
    return (
        f"epoch {stats.epoch:>3}  loss {stats.train_loss:.4f}  val loss {val_loss}  "
        f"lr {stats.lr:.1e}  {stats.seconds:.1f}s"
    )


def _print_run(run: Any, lines: list[str], as_json: bool) -> None:
    """The result: ``lines`` then where the run went, or (``--json``) one JSON document."""
    if as_json:
        import json

        doc = {"run": str(run.path), "kind": run.config.get("kind"), "config": run.config}
        typer.echo(json.dumps(doc, indent=2, default=str))
        return
    for line in lines:
        typer.echo(line)
    typer.echo(f"run written to {run.path}")


def _batch_videos(text: str | None) -> int | None:
    """``--batch-videos``: absent -> 1 (the authors' loop), ``auto`` -> None, else an integer."""
    if text is None:
        return 1
    if text.strip().lower() == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise typer.BadParameter(
            f"expected a number of videos or 'auto', got {text!r}", param_hint="--batch-videos"
        ) from None


def _validation(val: str | None, no_val: bool) -> Any:
    """``--val`` / ``--no-val`` as the trainers take it: a selection, ``None`` or ``AUTO``."""
    from featstore.trainers.data import AUTO

    if no_val and val is not None:
        raise typer.BadParameter("give either --val or --no-val")
    return None if no_val else (val if val is not None else AUTO)


def _holdout(
    val_fraction: float | None, val_seed: int | None, val: str | None, no_val: bool
) -> Any:
    """``--val-fraction`` / ``--val-seed`` as the trainers take them (None: no holdout)."""
    from featstore.trainers.kinds.fitting import Holdout

    if val_fraction is None:
        if val_seed is not None:
            raise typer.BadParameter("--val-seed seeds --val-fraction; give both")
        return None
    if val is not None or no_val:
        raise typer.BadParameter("give one of --val, --no-val and --val-fraction")
    return Holdout(val_fraction) if val_seed is None else Holdout(val_fraction, val_seed)


def _run_dir(out: Path | None, resume: Path | None) -> Path:
    """The run directory: ``--out``, or the one ``--resume`` continues."""
    if resume is None:
        if out is None:
            raise typer.BadParameter("give the run directory to write with --out (or --resume)")
        return out
    if out is not None and out.resolve() != resume.resolve():
        raise typer.BadParameter(f"--resume continues {resume}; --out must be it or left out")
    from featstore.trainers.checkpoints import checkpoint_epoch, has_checkpoint
    from featstore.trainers.kinds.fitting import checkpoint_folder

    if has_checkpoint(checkpoint_folder(resume)):
        epoch = checkpoint_epoch(checkpoint_folder(resume))
        typer.echo(f"resuming {resume} from its checkpoint of epoch {epoch}")
    return resume


@contextlib.contextmanager
def _interrupts() -> Iterator[None]:
    """SIGINT/SIGTERM: one line saying what was saved where, and exit 128 + the signal."""
    from featstore.trainers.training import TrainingInterrupted

    try:
        yield
    except TrainingInterrupted as exc:
        typer.echo(_interrupted_line(exc), err=True)
        raise typer.Exit(exc.interruption.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted: no run saved", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None


def _interrupted_line(exc: Any) -> str:
    what = exc.interruption
    head = f"interrupted by {what.signal}"
    if exc.run is None:
        return f"{head} before the first epoch finished: no run saved"
    fit = exc.run.config["fit"]
    line = (
        f"{head} after epoch {what.epochs_completed} of at most {what.max_epochs}: saved the "
        f"best-so-far run (best epoch {fit['best_epoch']}, marked interrupted) to {exc.run.path}"
    )
    if what.checkpoint_epoch is not None:
        line += (
            f"; continue from its checkpoint of epoch {what.checkpoint_epoch} with "
            f"--resume {exc.run.path}"
        )
    return line


@app.command("probe")
def probe(
    ctx: typer.Context,
    config_file: Path | None = CONFIG,
    store: str = STORE,
    encoder: list[str] = typer.Option(
        ...,
        "--encoder",
        "-e",
        metavar="ENCODER[:LAYER]",
        autocompletion=complete_features,
        help=f"Features to use: {FEATURES_HELP}.",
    ),
    layer: str | None = typer.Option(
        None,
        "--layer",
        "-l",
        show_default="last",
        help="Stored layer of encoders named without one.",
    ),
    train: str = typer.Option(
        ..., "--train", help="Training videos: NAME[@VIEW][:SPLIT] (bare NAME = its train split)."
    ),
    val: str | None = typer.Option(
        None,
        "--val",
        show_default="the train dataset's val split",
        help="Validation videos: NAME[@VIEW][:SPLIT].",
    ),
    no_val: bool = NO_VAL,
    val_fraction: float | None = VAL_FRACTION,
    val_seed: int | None = VAL_SEED,
    out: Path | None = OUT,
    epochs: int | None = typer.Option(None, "--epochs", show_default="100", help="Maximum epochs."),
    lr: float | None = typer.Option(None, "--lr", show_default="1e-3", help="Adam learning rate."),
    patience: int | None = typer.Option(
        None, "--patience", show_default="10", help="Early-stopping patience."
    ),
    batch_videos: str | None = typer.Option(
        None,
        "--batch-videos",
        show_default="1",
        metavar="N|auto",
        help="Videos per Adam step (1: the authors' loop). N > 1 steps on the mean loss "
        "of N videos at lr x N (see --no-scale-lr); 'auto': clamp(videos // 512, 1, 16).",
    ),
    center_bias: bool = typer.Option(
        False,
        "--center-bias",
        help="Start the bias at -log(median frames): even odds before training (the authors "
        "start at nn.Linear's draw).",
    ),
    no_scale_lr: bool = typer.Option(
        False, "--no-scale-lr", help="With --batch-videos N, keep lr instead of lr x N."
    ),
    frame_hz: float | None = FRAME_HZ,
    no_l2: bool = NO_L2,
    seed: int | None = SEED,
    device: str | None = DEVICE,
    cache_gb: float | None = CACHE_GB,
    overwrite: bool = OVERWRITE,
    allow_missing: bool = ALLOW_MISSING,
    tensorboard: Path | None = TENSORBOARD,
    checkpoint_every: int | None = CHECKPOINT_EVERY,
    resume: Path | None = RESUME,
    quiet: bool = QUIET,
    epoch_every: int = EPOCH_EVERY,
    as_json: bool = AS_JSON,
) -> None:
    """Linear probe (paper Eq. 1): per-frame logits, logsumexp over time, early stopping.

    The defaults are the authors' loop: one video per Adam step, lr 1e-3, nn.Linear's
    initialisation, up to 100 epochs, patience 10 on the validation loss, seed 43.
    """
    with _interrupts(), user_errors():
        from featstore import open_store
        from featstore.trainers.inputs import parse_feature_set
        from featstore.trainers.kinds import probe as probe_kind
        from featstore.trainers.memory import cache_bytes_of_gb
        from featstore.trainers.probe import ProbeConfig

        config = dataclasses.replace(
            _config(
                ProbeConfig(),
                max_epochs=epochs,
                lr=lr,
                patience=patience,
                seed=seed,
                device=device,
                l2_normalize=False if no_l2 else None,
                center_bias=True if center_bias else None,
                scale_lr=False if no_scale_lr else None,
                cache_bytes=cache_bytes_of_gb(cache_gb),
            ),
            batch_videos=_batch_videos(batch_videos),
        )
        show = epoch_printer(format_epoch, quiet=quiet, every=epoch_every, to_stderr=as_json)
        with _recording(ctx, tensorboard, show) as on_epoch:
            run = probe_kind.train(
                open_store(store),
                features=parse_feature_set(encoder, layer=layer),
                train=train,
                val=_validation(val, no_val),
                holdout=_holdout(val_fraction, val_seed, val, no_val),
                out=_run_dir(out, resume),
                config=config,
                frame_hz=frame_hz,
                on_epoch=on_epoch,
                overwrite=overwrite,
                allow_missing=allow_missing,
                checkpoint_every=checkpoint_every,
                resume=resume is not None,
            )
    _print_run(run, [_fit_line(run.config, reals=False), *card_lines(run.config)], as_json)


@app.command("ntp")
def ntp(
    ctx: typer.Context,
    config_file: Path | None = CONFIG,
    store: str = STORE,
    encoder: list[str] = typer.Option(
        ...,
        "--encoder",
        "-e",
        metavar="ENCODER[:LAYER]",
        autocompletion=complete_features,
        help=f"Features to use: {FEATURES_HELP}.",
    ),
    layer: str | None = typer.Option(
        None,
        "--layer",
        "-l",
        show_default="last",
        help="Stored layer of encoders named without one.",
    ),
    train: str = typer.Option(
        ...,
        "--train",
        help="Training videos: NAME[@VIEW][:SPLIT] (bare NAME = its train split); reals only.",
    ),
    val: str | None = typer.Option(
        None,
        "--val",
        show_default="the train dataset's val split",
        help="Validation videos: NAME[@VIEW][:SPLIT]; reals only.",
    ),
    no_val: bool = NO_VAL,
    val_fraction: float | None = VAL_FRACTION,
    val_seed: int | None = VAL_SEED,
    out: Path | None = OUT,
    epochs: int | None = typer.Option(None, "--epochs", show_default="100", help="Maximum epochs."),
    lr: float | None = typer.Option(
        None, "--lr", show_default="1e-3", help="Adam peak learning rate."
    ),
    patience: int | None = typer.Option(None, "--patience", help="Early-stopping patience."),
    batch_videos: int | None = typer.Option(None, "--batch-videos", help="Videos per step."),
    max_context: int | None = typer.Option(
        None,
        "--max-context",
        show_default="256",
        help="Frames per window; longer videos are windowed.",
    ),
    frame_hz: float | None = FRAME_HZ,
    no_l2: bool = NO_L2,
    seed: int | None = SEED,
    device: str | None = DEVICE,
    cache_gb: float | None = CACHE_GB,
    overwrite: bool = OVERWRITE,
    allow_missing: bool = ALLOW_MISSING,
    tensorboard: Path | None = TENSORBOARD,
    checkpoint_every: int | None = CHECKPOINT_EVERY,
    resume: Path | None = RESUME,
    quiet: bool = QUIET,
    epoch_every: int = EPOCH_EVERY,
    as_json: bool = AS_JSON,
) -> None:
    """Next-token prediction anomaly detector (paper Sec. 3.2), trained on real videos only."""
    with _interrupts(), user_errors():
        from featstore import open_store
        from featstore.trainers.inputs import parse_feature_set
        from featstore.trainers.kinds import ntp as ntp_kind
        from featstore.trainers.memory import cache_bytes_of_gb
        from featstore.trainers.ntp import NTPConfig

        config = _config(
            NTPConfig(),
            max_epochs=epochs,
            lr=lr,
            patience=patience,
            batch_videos=batch_videos,
            max_context=max_context,
            seed=seed,
            device=device,
            l2_normalize=False if no_l2 else None,
            cache_bytes=cache_bytes_of_gb(cache_gb),
        )
        show = epoch_printer(format_epoch, quiet=quiet, every=epoch_every, to_stderr=as_json)
        with _recording(ctx, tensorboard, show) as on_epoch:
            run = ntp_kind.train(
                open_store(store),
                features=parse_feature_set(encoder, layer=layer),
                train=train,
                val=_validation(val, no_val),
                holdout=_holdout(val_fraction, val_seed, val, no_val),
                out=_run_dir(out, resume),
                config=config,
                frame_hz=frame_hz,
                on_epoch=on_epoch,
                overwrite=overwrite,
                allow_missing=allow_missing,
                checkpoint_every=checkpoint_every,
                resume=resume is not None,
            )
    cfg = run.config
    th = cfg["learnt"]["thresholds"]
    thresholds = (
        f"thresholds ({th['quantile']:.0%} of real, on {th['learnt_on']}): "
        f"frame MSE {th['frame']:.4g}, video MSE {th['video']:.4g}"
    )
    _print_run(run, [_fit_line(cfg, reals=True), thresholds, *card_lines(run.config)], as_json)


@app.command("sync")
def sync(
    ctx: typer.Context,
    config_file: Path | None = CONFIG,
    store: str = STORE,
    audio: list[str] = typer.Option(
        ...,
        "--audio",
        metavar="ENCODER[:LAYER]",
        autocompletion=complete_features,
        help=f"Audio features (e.g. avhubert-a): {FEATURES_HELP}.",
    ),
    visual: list[str] = typer.Option(
        ...,
        "--visual",
        metavar="ENCODER[:LAYER]",
        autocompletion=complete_features,
        help=f"Visual features (e.g. avhubert-v): {FEATURES_HELP}.",
    ),
    train: str = typer.Option(
        ...,
        "--train",
        help="Training videos: NAME[@VIEW][:SPLIT] (bare NAME = its train split); reals only.",
    ),
    val: str | None = typer.Option(
        None,
        "--val",
        show_default="the train dataset's val split",
        help="Validation videos: NAME[@VIEW][:SPLIT]; reals only.",
    ),
    no_val: bool = NO_VAL,
    val_fraction: float | None = VAL_FRACTION,
    val_seed: int | None = VAL_SEED,
    out: Path | None = OUT,
    epochs: int | None = typer.Option(None, "--epochs", show_default="500", help="Maximum epochs."),
    lr: float | None = typer.Option(None, "--lr", show_default="1e-5", help="Adam learning rate."),
    patience: int | None = typer.Option(
        None, "--patience", show_default="10", help="Early-stopping patience."
    ),
    batch_frames: int | None = typer.Option(
        None, "--batch-frames", show_default="1024", help="Frames per step."
    ),
    frame_hz: float | None = FRAME_HZ,
    seed: int | None = SEED,
    device: str | None = DEVICE,
    cache_gb: float | None = CACHE_GB,
    trim_silence: bool = typer.Option(
        False,
        "--trim-silence",
        help="Drop each video's leading silence (needs the manifest column leading_silence_s).",
    ),
    overwrite: bool = OVERWRITE,
    allow_missing: bool = ALLOW_MISSING,
    tensorboard: Path | None = TENSORBOARD,
    checkpoint_every: int | None = CHECKPOINT_EVERY,
    resume: Path | None = RESUME,
    quiet: bool = QUIET,
    epoch_every: int = EPOCH_EVERY,
    as_json: bool = AS_JSON,
) -> None:
    """Audio-visual synchronisation (AVH-Align, paper Sec. 3.2), trained on real videos only."""
    with _interrupts(), user_errors():
        from featstore import open_store
        from featstore.trainers.inputs import parse_feature_set
        from featstore.trainers.kinds import sync as sync_kind
        from featstore.trainers.memory import cache_bytes_of_gb
        from featstore.trainers.sync import SyncConfig

        config = _config(
            SyncConfig(),
            max_epochs=epochs,
            lr=lr,
            patience=patience,
            batch_frames=batch_frames,
            seed=seed,
            device=device,
            cache_bytes=cache_bytes_of_gb(cache_gb),
        )
        val_selection = _validation(val, no_val)

        show = epoch_printer(format_sync_epoch, quiet=quiet, every=epoch_every, to_stderr=as_json)
        with _recording(ctx, tensorboard, show) as on_epoch:
            run = sync_kind.train(
                open_store(store),
                audio=parse_feature_set(audio),
                visual=parse_feature_set(visual),
                train=train,
                val=val_selection,
                holdout=_holdout(val_fraction, val_seed, val, no_val),
                out=_run_dir(out, resume),
                config=config,
                frame_hz=frame_hz,
                on_epoch=on_epoch,
                overwrite=overwrite,
                allow_missing=allow_missing,
                checkpoint_every=checkpoint_every,
                resume=resume is not None,
                trim_silence=trim_silence,
            )
    cfg = run.config
    th = cfg["learnt"]["thresholds"]
    thresholds = (
        f"thresholds (-Phi, on {th['learnt_on']} reals): frame {th['frame']:.4g} "
        f"({th['frame_quantile']:.0%}), video {th['video']:.4g} ({th['video_quantile']:.0%})"
    )
    _print_run(run, [_fit_line(cfg, reals=True), thresholds, *card_lines(run.config)], as_json)
