"""What every trained detector's fit loop shares: epochs, early stopping, checkpoints, interrupts.

The probe, the next-token predictor and the sync network each have their own
epoch (a step per batch of videos, of windows, of frames); :func:`train_epochs`
runs those epochs for all of them, written once:

- early stopping: the validation loss goes to :class:`EarlyStopping`, which
  keeps a copy of the best weights so far and says when ``patience`` epochs
  have passed without improvement; the fit then restores the best weights.
  Without validation the latest weights are the result and training runs every
  epoch (stopping on the training loss would only ever fire on noise);
- checkpoints (``TrainingControl.checkpoint_every``): every N epochs the
  trainer's whole state (its ``state_dict``: weights, optimizer, schedulers,
  random generators), the stopper's counters and best weights and the history
  are written atomically (:mod:`featstore.trainers.checkpoints`); ``resume`` continues
  from the last one and ends where an uninterrupted fit ends, bit for bit on
  the same device;
- interrupts: SIGINT (Ctrl-C) and SIGTERM (a batch scheduler's stop) end the
  loop with the best weights so far and an :class:`Interruption` saying when;
  the run kinds save that run, marked interrupted, then raise
  :class:`TrainingInterrupted` (a ``KeyboardInterrupt``), so callers that
  train many runs in a row still stop. A signal arriving while an epoch's
  bookkeeping (history, best weights, checkpoint) is being written waits until
  it is consistent.

The loop makes no assumption about how an epoch moves the weights, so a
closed-form step (e.g. a probe solved per video) fits it as well as Adam: an
epoch is a callable ``epoch(n) -> (stats, val_loss)`` and the trainer's state
is anything with ``state_dict()`` / ``load_state_dict()``.

>>> result = train_epochs(  # doctest: +SKIP
...     run_one_epoch, max_epochs=100, patience=10, snapshot=lambda: weights.copy(),
...     state=trainer, stats_type=EpochStats, control=TrainingControl(folder, checkpoint_every=5),
... )
>>> weights = result.best  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from featstore.errors import FeatstoreError

if TYPE_CHECKING:
    import torch

    from featstore.trainers.runs import Run

log = logging.getLogger(__name__)

__all__ = [
    "EarlyStopping",
    "Interruption",
    "LoopResult",
    "StateFunctions",
    "TrainerState",
    "TrainingControl",
    "TrainingError",
    "TrainingInterrupted",
    "resolve_device",
    "set_torch_rng_state",
    "torch_rng_state",
    "train_epochs",
]

State = TypeVar("State")
Stats = TypeVar("Stats")

# Hyperparameters that do not change what a fit computes on one device: a resumed
# fit may differ from its checkpoint in these (e.g. more memory for the cache).
RESUME_NEUTRAL = frozenset({"cache_bytes", "device"})


class TrainingError(FeatstoreError, ValueError):
    """A detector cannot be trained as configured (e.g. a device that is not there)."""


def resolve_device(name: str, *, error: type[FeatstoreError] = TrainingError) -> torch.device:
    """``torch.device(name)``; a CUDA device where CUDA is missing raises ``error``."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise error(f"unknown device {name!r}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise error(f"device {name!r} requested but CUDA is not available")
    return device


class EarlyStopping(Generic[State]):
    """Patience on the validation loss, and the weights of the best epoch.

    ``snapshot()`` copies the current weights; it is called at the start (so
    ``best`` is defined before any epoch) and whenever an epoch becomes the
    best one. Without validation (``update(epoch, None)``) every epoch is the
    best: the result is the last epoch's weights and training never stops early.
    """

    def __init__(self, patience: int, *, snapshot: Callable[[], State]) -> None:
        if not isinstance(patience, int) or patience < 1:
            raise TrainingError(f"patience must be an integer >= 1, got {patience!r}")
        self.patience = patience
        self._snapshot = snapshot
        self.best: State = snapshot()
        self.best_loss = math.inf
        self.best_epoch = 0
        self.stopped = False
        self._bad_epochs = 0

    def update(self, epoch: int, val_loss: float | None) -> bool:
        """Record epoch ``epoch`` (1-based); True when training should stop now."""
        if val_loss is None:
            self.best, self.best_epoch = self._snapshot(), epoch
            return False
        if val_loss < self.best_loss:
            self.best_loss, self.best_epoch, self._bad_epochs = val_loss, epoch, 0
            self.best = self._snapshot()
            return False
        self._bad_epochs += 1
        if self._bad_epochs >= self.patience:
            self.stopped = True
        return self.stopped

    def state_dict(self) -> dict[str, Any]:
        """Everything that decides later epochs: best weights, best loss and epoch, counters."""
        return {
            "best": self.best,
            "best_loss": float(self.best_loss),
            "best_epoch": int(self.best_epoch),
            "bad_epochs": int(self._bad_epochs),
            "stopped": bool(self.stopped),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict` (``patience`` stays this stopper's)."""
        self.best = state["best"]
        self.best_loss = float(state["best_loss"])
        self.best_epoch = int(state["best_epoch"])
        self._bad_epochs = int(state["bad_epochs"])
        self.stopped = bool(state["stopped"])


# ------------------------------------------------------------------ the shared loop


class TrainerState(Protocol):
    """What a fit checkpoints: everything that evolves from epoch to epoch."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


@dataclass(frozen=True)
class Interruption:
    """Why and when a fit stopped before its end: the signal and the epochs it completed."""

    signal: str  # "SIGINT" or "SIGTERM"
    epochs_completed: int
    max_epochs: int
    checkpoint_epoch: int | None = None  # the epoch a resume continues from (None: no checkpoint)

    @property
    def exit_code(self) -> int:
        """The shell's code for death by this signal (128 + its number: 130 for SIGINT)."""
        return 128 + int(getattr(signal, self.signal, signal.SIGINT))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT/SIGTERM; raised once the best-so-far run is saved.

    ``run`` is that run (None when no epoch had finished, so nothing was saved).
    A ``KeyboardInterrupt``, so a loop over many trainings stops as before.
    """

    def __init__(self, interruption: Interruption, run: Run | None = None) -> None:
        super().__init__(interruption.signal)
        self.interruption = interruption
        self.run = run


class _Signalled(KeyboardInterrupt):
    """Raised by the loop's handler: carries the signal's name."""

    def __init__(self, signum: int) -> None:
        self.signal = signal.Signals(signum).name
        super().__init__(self.signal)


@dataclass(frozen=True)
class TrainingControl:
    """How a fit is checkpointed, resumed and interrupted.

    ``checkpoint_dir`` is where checkpoints go (a run's ``checkpoint/``);
    ``checkpoint_every`` N writes one after every N-th epoch (None: only when
    an interrupt lands between epochs); ``resume`` continues from the one
    there; ``fingerprint`` (JSON) is what the checkpoint must have been written
    for (features, selections, hyperparameters), compared on resume.
    ``catch_interrupts`` turns SIGINT/SIGTERM into an :class:`Interruption`
    (without a control, interrupts propagate as they always did).
    """

    checkpoint_dir: Path | None = None
    checkpoint_every: int | None = None
    resume: bool = False
    fingerprint: Mapping[str, Any] | None = field(default=None, repr=False)
    catch_interrupts: bool = True

    def __post_init__(self) -> None:
        every = self.checkpoint_every
        if every is not None and (
            not isinstance(every, int) or isinstance(every, bool) or every < 1
        ):
            raise TrainingError(f"checkpoint_every must be an integer >= 1, got {every!r}")
        if (every is not None or self.resume) and self.checkpoint_dir is None:
            raise TrainingError("checkpoints and resuming need a checkpoint folder")
        if self.checkpoint_dir is not None:
            object.__setattr__(self, "checkpoint_dir", Path(self.checkpoint_dir))


@dataclass(frozen=True)
class LoopResult(Generic[Stats, State]):
    """The history, the best weights and their epoch, and how the loop ended."""

    history: list[Stats]
    best: State
    best_epoch: int
    stopped_early: bool
    interruption: Interruption | None = None
    resumed_from: int | None = None  # the checkpoint epoch the fit continued from


class _Signals:
    """SIGINT/SIGTERM raise :class:`_Signalled`, or wait while ``deferred`` bookkeeping runs.

    Installed only in the main thread (the only one Python delivers signals
    to) and never over a signal the process was told to ignore.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._old: dict[int, Any] = {}
        self._deferring = False
        self._pending: int | None = None

    def __enter__(self) -> _Signals:
        if self.enabled and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(signum) is signal.SIG_IGN:
                    continue
                self._old[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, old in self._old.items():
            signal.signal(signum, old)
        self._old.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._deferring:
            self._pending = signum
            return
        raise _Signalled(signum)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self._pending is not None:
            signum, self._pending = self._pending, None
            raise _Signalled(signum)


def _plain(value: Any) -> Any:
    item = getattr(value, "item", None)  # numpy scalars
    return item() if callable(item) else str(value)


def _jsonable(doc: Any) -> Any:
    """``doc`` as JSON reads it back (tuples as lists, numpy scalars as numbers)."""
    return json.loads(json.dumps(doc, default=_plain))


def _differences(saved: Any, current: Any, path: str = "") -> list[str]:
    """Paths where two JSON trees differ (keys in ``RESUME_NEUTRAL`` are skipped)."""
    if isinstance(saved, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(saved) | set(current)):
            if key in RESUME_NEUTRAL:
                continue
            where = f"{path}.{key}" if path else str(key)
            if key not in saved or key not in current:
                out.append(where)
            else:
                out.extend(_differences(saved[key], current[key], where))
        return out
    return [] if saved == current else [path or "/"]


def _describe(doc: Any, path: str) -> str:
    for key in path.split("."):
        if not isinstance(doc, dict) or key not in doc:
            return "(absent)"
        doc = doc[key]
    return json.dumps(doc)[:80]


def train_epochs(
    epoch: Callable[[int], tuple[Stats, float | None]],
    *,
    max_epochs: int,
    patience: int,
    snapshot: Callable[[], State],
    state: TrainerState,
    stats_type: type[Stats],
    on_epoch: Callable[[Stats], None] | None = None,
    control: TrainingControl | None = None,
) -> LoopResult[Stats, State]:
    """Run ``epoch(1) .. epoch(max_epochs)`` with early stopping, checkpoints and interrupts.

    ``epoch(n)`` trains epoch ``n`` (1-based) and returns its stats (a
    dataclass of plain values, ``stats_type``) and validation loss (None:
    no validation). ``snapshot()`` copies the current weights (the best ones
    are kept); ``state`` is the trainer's whole evolving state. ``on_epoch``
    sees each epoch's stats after it is recorded; a ``KeyboardInterrupt`` it
    raises counts as an interrupt after that epoch.
    """
    from featstore.trainers.checkpoints import (
        checkpoint_epoch,
        has_checkpoint,
        load_checkpoint,
        save_checkpoint,
    )

    control = control or TrainingControl(catch_interrupts=False)
    stop = EarlyStopping(patience, snapshot=snapshot)
    history: list[Stats] = []
    fingerprint = None if control.fingerprint is None else _jsonable(control.fingerprint)
    first, resumed_from = 1, None
    folder = control.checkpoint_dir
    if control.resume:
        assert folder is not None  # TrainingControl checks it
        if not has_checkpoint(folder):
            raise TrainingError(f"no checkpoint to resume in {folder}")
        saved = load_checkpoint(folder)
        if fingerprint is not None:
            diff = _differences(saved.get("fingerprint"), fingerprint)
            if diff:
                shown = "; ".join(
                    f"{p}: checkpoint {_describe(saved.get('fingerprint'), p)}, "
                    f"now {_describe(fingerprint, p)}"
                    for p in diff[:3]
                )
                raise TrainingError(
                    f"the checkpoint in {folder} was written for another training ({shown}); "
                    "resume with the options and data it was started with"
                )
        state.load_state_dict(saved["trainer"])
        stop.load_state_dict(saved["early_stopping"])
        history = [stats_type(**row) for row in saved["history"]]
        resumed_from = int(saved["epoch"])
        first = resumed_from + 1
        log.info("resuming from the checkpoint of epoch %d in %s", resumed_from, folder)

    def write_checkpoint(n: int) -> None:
        assert folder is not None
        doc = {
            "epoch": n,
            "trainer": state.state_dict(),
            "early_stopping": stop.state_dict(),
            "history": [dataclasses.asdict(h) for h in history],  # type: ignore[call-overload]
            "fingerprint": fingerprint,
        }
        save_checkpoint(folder, doc, epoch=n)
        log.debug("checkpoint of epoch %d written to %s", n, folder)

    interruption = None
    at_boundary = False  # the trainer's state is that of the end of history[-1]'s epoch
    every = control.checkpoint_every
    with _Signals(control.catch_interrupts) as signals:
        try:
            for n in range(first, max_epochs + 1):
                if stop.stopped:
                    break
                at_boundary = False
                stats, val_loss = epoch(n)
                with signals.deferred():
                    history.append(stats)
                    stopping = stop.update(n, val_loss)
                    at_boundary = True
                    if every is not None and n % every == 0 and not stopping and n < max_epochs:
                        write_checkpoint(n)
                if on_epoch is not None:
                    on_epoch(stats)
                if stopping:
                    break
        except KeyboardInterrupt as exc:
            if not control.catch_interrupts:
                raise
            name = getattr(exc, "signal", "SIGINT")
            done = len(history)
            saved_at = None
            if folder is not None and every is not None:
                saved_at = checkpoint_epoch(folder) if has_checkpoint(folder) else None
                if at_boundary and done and saved_at != done:
                    with signals.deferred():  # the state is exactly that of epoch `done`
                        write_checkpoint(done)
                    saved_at = done
            interruption = Interruption(name, done, max_epochs, saved_at)
            log.info(
                "interrupted by %s after %d of at most %d epochs; best epoch so far: %d",
                name,
                done,
                max_epochs,
                stop.best_epoch,
            )
    return LoopResult(
        history=history,
        best=stop.best,
        best_epoch=stop.best_epoch,
        stopped_early=stop.stopped,
        interruption=interruption,
        resumed_from=resumed_from,
    )


@dataclass(frozen=True)
class StateFunctions:
    """A :class:`TrainerState` from two closures (a fit's locals: weights, optimizer, generators)."""

    save: Callable[[], dict[str, Any]]
    load: Callable[[Mapping[str, Any]], None]

    def state_dict(self) -> dict[str, Any]:
        return self.save()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.load(state)


def torch_rng_state(device: torch.device) -> dict[str, Any]:
    """The global torch generators a fit on ``device`` draws from (CPU, and the CUDA device's)."""
    import torch

    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_torch_rng_state(device: torch.device, state: Mapping[str, Any]) -> None:
    """Restore what :func:`torch_rng_state` saved."""
    import torch

    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
