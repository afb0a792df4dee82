"""``featstore train probe | ntp | sync``: fit a detector on stored features, write its run.

``probe`` is the paper's linear probe (real and fake videos); ``ntp`` (next-token
prediction) and ``sync`` (AVH-Align) are trained on real videos only. Each prints
one line per epoch and writes a run directory that ``featstore eval`` reads. The
commands call the run kinds' ``train`` (``trainers.kinds``). Features may be
feature sets: ``--encoder avhubert-a+avhubert-v`` or a repeated ``--encoder``.
Options may come from a TOML/YAML file (``--config``, ``cli.config_file``); where
each came from is recorded in the run's ``config.json`` (``invocation``), with the
TensorBoard folder when ``--tensorboard`` logs the training curves.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import typer

from cli.config_file import config_option, invocation
from cli.errors import user_errors
from cli.options import complete_features, store_option

app = typer.Typer(help="Train detectors on stored features.", no_args_is_help=True)

# Options every trainer takes, declared once.
STORE = store_option()
OUT = typer.Option(..., "--out", "-o", help="Run directory to write.")
NO_VAL = typer.Option(False, "--no-val", help="Train without validation (no early stop).")
SEED = typer.Option(None, "--seed", help="Random seed (default 43).")
DEVICE = typer.Option(None, "--device", help="torch device (cpu, cuda, ...).")
OVERWRITE = typer.Option(False, "--overwrite", help="Replace a complete run at --out.")
ALLOW_MISSING = typer.Option(
    False, "--allow-missing", help="Skip videos without stored features (warn) instead of failing."
)
NO_L2 = typer.Option(False, "--no-l2", help="Do not L2-normalise frames.")
CONFIG = config_option()
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
FRAME_HZ = typer.Option(
    None,
    "--frame-hz",
    help="Read the features at this rate (needed when a feature set mixes rates; slower rows "
    "are repeated).",
)


def _fit_line(cfg: Any, reals: bool) -> str:
    """``best epoch B of E (stopped early); trained on ..., validated on ...``."""
    fit = cfg["fit"]
    val_text = cfg["val"]["selection"] if cfg.get("val") else "none"
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
    from trainers.runcard import RunCard

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
    from trainers.runs import recorded_invocation

    doc = invocation(ctx)
    curves = None
    if tensorboard is not None:
        from trainers.curves import open_curves

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


def _print_epoch(stats: Any) -> None:
    typer.echo(format_epoch(stats))


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
    from trainers.data import AUTO

    if no_val and val is not None:
        raise typer.BadParameter("give either --val or --no-val")
    return None if no_val else (val if val is not None else AUTO)


@app.command("probe")
def probe(
    ctx: typer.Context,
    config_file: Path | None = CONFIG,
    store: str = STORE,
    encoder: list[str] = typer.Option(
        ...,
        "--encoder",
        "-e",
        autocompletion=complete_features,
        help=f"Features to use: {FEATURES_HELP}.",
    ),
    layer: str | None = typer.Option(
        None, "--layer", "-l", help="Stored layer of encoders named without one (default: last)."
    ),
    train: str = typer.Option(
        ..., "--train", help="Training videos: NAME[@VIEW][:SPLIT] (bare NAME = its train split)."
    ),
    val: str | None = typer.Option(
        None,
        "--val",
        help="Validation videos: NAME[@VIEW][:SPLIT] (default: the train dataset's val split).",
    ),
    no_val: bool = NO_VAL,
    out: Path = OUT,
    epochs: int | None = typer.Option(None, "--epochs", help="Maximum epochs (default 100)."),
    lr: float | None = typer.Option(None, "--lr", help="Adam learning rate (default 1e-3)."),
    patience: int | None = typer.Option(None, "--patience", help="Early-stopping patience."),
    batch_videos: str | None = typer.Option(
        None,
        "--batch-videos",
        help="Videos per Adam step (default 1, the authors' loop). N > 1 steps on the mean loss "
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
    overwrite: bool = OVERWRITE,
    allow_missing: bool = ALLOW_MISSING,
    tensorboard: Path | None = TENSORBOARD,
) -> None:
    """Linear probe (paper Eq. 1): per-frame logits, logsumexp over time, early stopping.

    The defaults are the authors' loop: one video per Adam step, lr 1e-3, nn.Linear's
    initialisation, up to 100 epochs, patience 10 on the validation loss, seed 43.
    """
    with user_errors():
        from featstore import open_store
        from trainers.inputs import parse_feature_set
        from trainers.kinds import probe as probe_kind
        from trainers.probe import ProbeConfig

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
            ),
            batch_videos=_batch_videos(batch_videos),
        )
        with _recording(ctx, tensorboard, _print_epoch) as on_epoch:
            run = probe_kind.train(
                open_store(store),
                features=parse_feature_set(encoder, layer=layer),
                train=train,
                val=_validation(val, no_val),
                out=out,
                config=config,
                frame_hz=frame_hz,
                on_epoch=on_epoch,
                overwrite=overwrite,
                allow_missing=allow_missing,
            )
    typer.echo(_fit_line(run.config, reals=False))
    for line in card_lines(run.config):
        typer.echo(line)
    typer.echo(f"run written to {run.path}")


@app.command("ntp")
def ntp(
    ctx: typer.Context,
    config_file: Path | None = CONFIG,
    store: str = STORE,
    encoder: list[str] = typer.Option(
        ...,
        "--encoder",
        "-e",
        autocompletion=complete_features,
        help=f"Features to use: {FEATURES_HELP}.",
    ),
    layer: str | None = typer.Option(
        None, "--layer", "-l", help="Stored layer of encoders named without one (default: last)."
    ),
    train: str = typer.Option(
        ...,
        "--train",
        help="Training videos: NAME[@VIEW][:SPLIT] (bare NAME = its train split); reals only.",
    ),
    val: str | None = typer.Option(
        None,
        "--val",
        help="Validation videos: NAME[@VIEW][:SPLIT] (default: the train dataset's val split); reals only.",
    ),
    no_val: bool = NO_VAL,
    out: Path = OUT,
    epochs: int | None = typer.Option(None, "--epochs", help="Maximum epochs (default 100)."),
    lr: float | None = typer.Option(None, "--lr", help="Adam peak learning rate (default 1e-3)."),
    patience: int | None = typer.Option(None, "--patience", help="Early-stopping patience."),
    batch_videos: int | None = typer.Option(None, "--batch-videos", help="Videos per step."),
    max_context: int | None = typer.Option(
        None, "--max-context", help="Frames per window (default 256); longer videos are windowed."
    ),
    frame_hz: float | None = FRAME_HZ,
    no_l2: bool = NO_L2,
    seed: int | None = SEED,
    device: str | None = DEVICE,
    overwrite: bool = OVERWRITE,
    allow_missing: bool = ALLOW_MISSING,
    tensorboard: Path | None = TENSORBOARD,
) -> None:
    """Next-token prediction anomaly detector (paper Sec. 3.2), trained on real videos only."""
    with user_errors():
        from featstore import open_store
        from trainers.inputs import parse_feature_set
        from trainers.kinds import ntp as ntp_kind
        from trainers.ntp import NTPConfig

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
        )
        with _recording(ctx, tensorboard, _print_epoch) as on_epoch:
            run = ntp_kind.train(
                open_store(store),
                features=parse_feature_set(encoder, layer=layer),
                train=train,
                val=_validation(val, no_val),
                out=out,
                config=config,
                frame_hz=frame_hz,
                on_epoch=on_epoch,
                overwrite=overwrite,
                allow_missing=allow_missing,
            )
    cfg = run.config
    th = cfg["learnt"]["thresholds"]
    typer.echo(_fit_line(cfg, reals=True))
    typer.echo(
        f"thresholds ({th['quantile']:.0%} of real, on {th['learnt_on']}): "
        f"frame MSE {th['frame']:.4g}, video MSE {th['video']:.4g}"
    )
    for line in card_lines(cfg):
        typer.echo(line)
    typer.echo(f"run written to {run.path}")


@app.command("sync")
def sync(
    ctx: typer.Context,
    config_file: Path | None = CONFIG,
    store: str = STORE,
    audio: list[str] = typer.Option(
        ...,
        "--audio",
        autocompletion=complete_features,
        help=f"Audio features (e.g. avhubert-a): {FEATURES_HELP}.",
    ),
    visual: list[str] = typer.Option(
        ...,
        "--visual",
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
        help="Validation videos: NAME[@VIEW][:SPLIT] (default: the train dataset's val split); reals only.",
    ),
    no_val: bool = NO_VAL,
    out: Path = OUT,
    epochs: int | None = typer.Option(None, "--epochs", help="Maximum epochs (default 500)."),
    lr: float | None = typer.Option(None, "--lr", help="Adam learning rate (default 1e-5)."),
    patience: int | None = typer.Option(
        None, "--patience", help="Early-stopping patience (default 10)."
    ),
    batch_frames: int | None = typer.Option(
        None, "--batch-frames", help="Frames per step (default 1024)."
    ),
    frame_hz: float | None = FRAME_HZ,
    seed: int | None = SEED,
    device: str | None = DEVICE,
    trim_silence: bool = typer.Option(
        False,
        "--trim-silence",
        help="Drop each video's leading silence (needs the manifest column leading_silence_s).",
    ),
    overwrite: bool = OVERWRITE,
    allow_missing: bool = ALLOW_MISSING,
    tensorboard: Path | None = TENSORBOARD,
) -> None:
    """Audio-visual synchronisation (AVH-Align, paper Sec. 3.2), trained on real videos only."""
    with user_errors():
        from featstore import open_store
        from trainers.inputs import parse_feature_set
        from trainers.kinds import sync as sync_kind
        from trainers.sync import SyncConfig

        config = _config(
            SyncConfig(),
            max_epochs=epochs,
            lr=lr,
            patience=patience,
            batch_frames=batch_frames,
            seed=seed,
            device=device,
        )
        val_selection = _validation(val, no_val)

        def show(stats: Any) -> None:
            val_loss = "-" if stats.val_loss is None else f"{stats.val_loss:.4f}"
            typer.echo(
                f"epoch {stats.epoch:>3}  loss {stats.train_loss:.4f}  val loss {val_loss}  "
                f"lr {stats.lr:.1e}  {stats.seconds:.1f}s"
            )

        with _recording(ctx, tensorboard, show) as on_epoch:
            run = sync_kind.train(
                open_store(store),
                audio=parse_feature_set(audio),
                visual=parse_feature_set(visual),
                train=train,
                val=val_selection,
                out=out,
                config=config,
                frame_hz=frame_hz,
                on_epoch=on_epoch,
                overwrite=overwrite,
                allow_missing=allow_missing,
                trim_silence=trim_silence,
            )
    cfg = run.config
    th = cfg["learnt"]["thresholds"]
    typer.echo(_fit_line(cfg, reals=True))
    typer.echo(
        f"thresholds (-Phi, on {th['learnt_on']} reals): frame {th['frame']:.4g} "
        f"({th['frame_quantile']:.0%}), video {th['video']:.4g} ({th['video_quantile']:.0%})"
    )
    for line in card_lines(cfg):
        typer.echo(line)
    typer.echo(f"run written to {run.path}")
