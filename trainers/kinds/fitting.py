"""What the trained kinds' ``train()`` share around the fit: validation, checkpoints, interrupts.

- Validation. ``val=AUTO`` takes the training dataset's ``val`` split; a
  dataset without one used to train every epoch silently. Now that is a
  warning (:func:`training_selections`), and :class:`Holdout` is the opt-in
  alternative: a seeded fraction of the training videos held out as
  validation, whole identities (or source videos) at a time and per label
  (``featstore.datasets.protocols.grouped_holdout``), recorded in the run
  config under ``train.holdout`` and ``val.holdout``. The default stays the
  paper's: the dataset's own ``val`` split.
- Run directories. A training writes its checkpoints into its run directory
  (``<out>/checkpoint/``); :func:`prepare_run_dir` checks before any data is
  read that ``out`` can take this training (a fresh run, a resume of the
  checkpoint there, or an overwrite), and :func:`run_control` builds the
  loop's :class:`~featstore.trainers.training.TrainingControl`.
- Interrupts. SIGINT/SIGTERM end the fit with the best weights so far; the
  kind saves that run, its ``fit.interrupted`` saying by which signal after
  how many epochs, then :func:`finish` raises
  :class:`~featstore.trainers.training.TrainingInterrupted` carrying it. A finished
  run's checkpoint is removed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featstore.trainers.checkpoints import CHECKPOINT_DIR, checkpoint_epoch, has_checkpoint
from featstore.trainers.data import Auto, Selection, SelectionError, default_val, selection_summary
from featstore.trainers.runs import RunError, check_writable, is_complete, load_run
from featstore.trainers.training import Interruption, TrainingControl, TrainingInterrupted

if TYPE_CHECKING:
    import pandas as pd

    from featstore.store import FeatureStore
    from featstore.trainers.runs import Run

log = logging.getLogger(__name__)

DEFAULT_HOLDOUT_SEED = 43  # the seed of the authors' code, as every protocol here

__all__ = [
    "Holdout",
    "TrainingRows",
    "checkpoint_folder",
    "finish",
    "fit_record",
    "hold_out",
    "prepare_run_dir",
    "run_control",
    "training_rows",
    "training_selections",
]


@dataclass(frozen=True)
class Holdout:
    """Hold out ``fraction`` of the training videos as validation, drawn with ``seed``."""

    fraction: float
    seed: int = DEFAULT_HOLDOUT_SEED

    def __post_init__(self) -> None:
        f = self.fraction
        if isinstance(f, bool) or not isinstance(f, int | float) or not 0.0 < f < 1.0:
            raise SelectionError(f"the validation fraction must be in (0, 1), got {f!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise SelectionError(f"the validation seed must be an integer >= 0, got {self.seed!r}")


def training_selections(
    store: FeatureStore,
    train: Selection | str,
    val: Selection | str | Auto | None,
    *,
    holdout: Holdout | None = None,
    max_epochs: int | None = None,
) -> tuple[Selection, Selection | None]:
    """``train`` (bare name = its train split) and ``val`` (``AUTO``: the training
    dataset's val split when it has one; ``None``: no validation).

    With ``holdout`` validation comes from the training videos (``val`` must be
    ``AUTO``) and the returned ``val`` is None. ``AUTO`` finding no ``val``
    split logs a warning: training then runs every epoch without early stopping.
    """
    train_sel = Selection.parse(train, default_split="train")
    if holdout is not None:
        if not isinstance(val, Auto):
            raise SelectionError(
                "a held-out validation fraction replaces the validation selection: give one "
                "of them (and not 'no validation' with it)"
            )
        return train_sel, None
    if isinstance(val, Auto):
        val_sel = default_val(store, train_sel)
        if val_sel is None:
            view = f" (view {train_sel.view})" if train_sel.view else ""
            epochs = f"all {max_epochs} epochs" if max_epochs else "every epoch"
            log.warning(
                "%s%s has no 'val' split: training runs %s without validation or early "
                "stopping and keeps the last epoch's weights; give a validation selection "
                "(--val NAME:SPLIT), hold out part of the training videos (--val-fraction F), "
                "or --no-val to train without validation on purpose",
                train_sel.dataset,
                view,
                epochs,
            )
    else:
        val_sel = None if val is None else Selection.parse(val, default_split="val")
    if val_sel == train_sel:
        raise SelectionError(f"validation selection {val_sel} is the training selection")
    return train_sel, val_sel


def hold_out(
    selection: Selection, rows: pd.DataFrame, holdout: Holdout
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Training rows, held-out validation rows, and the record of how they were drawn.

    Groups (``featstore.datasets.protocols.video_groups``: identities where the
    paths name them, else source videos of segments, else videos) never
    straddle the two sides; per label about ``fraction`` of the rows go to
    validation. Too few videos to hold any out (or to keep any) is an error.
    """
    from featstore.datasets.protocols import grouped_holdout, video_groups

    groups, group_by = video_groups(rows)
    held = grouped_holdout(groups, rows["label"], fraction=holdout.fraction, seed=holdout.seed)
    n_groups = int(groups.nunique())
    if not held.any() or held.all():
        side = "no videos" if not held.any() else "every video"
        raise SelectionError(
            f"holding out {holdout.fraction:g} of {selection}'s {len(rows)} training videos "
            f"({n_groups} {group_by} groups) puts {side} in validation; change the fraction"
        )
    info = {
        "from": str(selection),
        "fraction": float(holdout.fraction),
        "seed": int(holdout.seed),
        "group_by": group_by,
        "n_groups": n_groups,
        "n_val_groups": int(groups[held].nunique()),
    }
    train_rows, val_rows = rows[~held].reset_index(drop=True), rows[held].reset_index(drop=True)
    train_rows.attrs, val_rows.attrs = dict(rows.attrs), dict(rows.attrs)
    return train_rows, val_rows, info


@dataclass(frozen=True)
class TrainingRows:
    """The manifest rows a fit trains and validates on, and what the run config records."""

    train: pd.DataFrame
    val: pd.DataFrame | None
    val_dataset: str | None
    train_summary: dict[str, Any]
    val_summary: dict[str, Any] | None


def training_rows(
    train_sel: Selection,
    val_sel: Selection | None,
    holdout: Holdout | None,
    select: Callable[[Selection], pd.DataFrame],
    *,
    check_val: Callable[[str], None] | None = None,
) -> TrainingRows:
    """Rows of ``train_sel`` and of the validation: ``val_sel``'s, or held out of the
    training rows with ``holdout``. ``select(sel)`` is the kind's own selection (e.g.
    real videos only); ``check_val(dataset)`` checks a validation dataset's features."""
    rows = select(train_sel)
    if holdout is not None:
        train, val, info = hold_out(train_sel, rows, holdout)
        return TrainingRows(
            train,
            val,
            train_sel.dataset,
            {**selection_summary(train_sel, train), "holdout": {**info, "side": "train"}},
            {**selection_summary(train_sel, val), "holdout": {**info, "side": "val"}},
        )
    if val_sel is None:
        return TrainingRows(rows, None, None, selection_summary(train_sel, rows), None)
    if check_val is not None:
        check_val(val_sel.dataset)
    val = select(val_sel)
    return TrainingRows(
        rows,
        val,
        val_sel.dataset,
        selection_summary(train_sel, rows),
        selection_summary(val_sel, val),
    )


# ------------------------------------------------------------------ run directories


def checkpoint_folder(out: str | os.PathLike[str]) -> Path:
    """Where a run's checkpoints go: ``<out>/checkpoint``."""
    return Path(out) / CHECKPOINT_DIR


def prepare_run_dir(out: str | os.PathLike[str], *, resume: bool, overwrite: bool) -> None:
    """Fail early (before a long read or fit) unless ``out`` can take this training.

    A resume needs the checkpoint an unfinished training left there; a fresh
    training refuses a complete run (unless ``overwrite``) and a checkpoint of
    an unfinished one (resume it, or ``overwrite`` discards it).
    """
    from featstore.trainers.checkpoints import remove_checkpoint

    folder = checkpoint_folder(out)
    if resume:
        if overwrite:
            raise RunError("resume continues the run at its directory; do not also overwrite it")
        if not has_checkpoint(folder):
            raise RunError(
                f"{out} has no checkpoint to resume (trainings write one with --checkpoint-every N)"
            )
        if is_complete(out) and not load_run(out).interrupted:
            raise RunError(f"{out} holds a finished run; there is nothing to resume")
        return
    if has_checkpoint(folder):
        if not overwrite:
            raise RunError(
                f"{out} holds the checkpoint of an unfinished training (epoch "
                f"{checkpoint_epoch(folder)}): resume it (--resume {out}) or start again with "
                "--overwrite"
            )
        remove_checkpoint(folder)
    check_writable(out, overwrite=overwrite)


def run_control(
    out: str | os.PathLike[str],
    *,
    checkpoint_every: int | None,
    resume: bool,
    fingerprint: dict[str, Any],
) -> TrainingControl:
    """The loop's control for a training writing its run at ``out``."""
    return TrainingControl(
        checkpoint_dir=checkpoint_folder(out),
        checkpoint_every=checkpoint_every,
        resume=resume,
        fingerprint=fingerprint,
    )


def fit_record(result: Any, control: TrainingControl) -> dict[str, Any]:
    """What ``fit`` in a run config adds about checkpoints, resumes and interrupts."""
    out: dict[str, Any] = {}
    if control.checkpoint_every is not None:
        out["checkpoint_every"] = int(control.checkpoint_every)
    if result.resumed_from is not None:
        out["resumed_from"] = int(result.resumed_from)
    if result.interruption is not None:
        out["interrupted"] = result.interruption.to_dict()
    return out


def nothing_to_save(interruption: Interruption | None) -> None:
    """An interrupt before the first epoch finished: no run to save, stop now."""
    if interruption is not None and interruption.epochs_completed == 0:
        raise TrainingInterrupted(interruption, None)


def finish(run: Run, interruption: Interruption | None, control: TrainingControl) -> Run:
    """``run`` once saved: raise :class:`TrainingInterrupted` if it was cut short, else
    drop its checkpoint (the finished run supersedes it)."""
    from featstore.trainers.checkpoints import remove_checkpoint

    if interruption is not None:
        log.info("interrupted run saved to %s", run.path)
        raise TrainingInterrupted(interruption, run)
    if control.checkpoint_dir is not None:
        remove_checkpoint(control.checkpoint_dir)
    return run
