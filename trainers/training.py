"""What every trained detector's fit loop shares: the device, early stopping, best weights.

The probe, the next-token predictor and the sync network each have their own
epoch (a step per batch of videos, of windows, of frames), but they end an
epoch the same way: hand the validation loss to :class:`EarlyStopping`, which
keeps a copy of the best weights so far and says when ``patience`` epochs
have passed without improvement; at the end the fit restores
:attr:`EarlyStopping.best`. Without validation the latest weights are the
result and training runs every epoch (stopping on the training loss would
only ever fire on noise).

The loop makes no assumption about how an epoch moves the weights, so a
closed-form step (e.g. a probe solved per video) fits it as well as Adam.

>>> stop = EarlyStopping(patience=2, snapshot=lambda: weights.copy())  # doctest: +SKIP
>>> for epoch in range(1, max_epochs + 1):  # doctest: +SKIP
...     train_one_epoch()
...     if stop.update(epoch, validation_loss()):
...         break
>>> weights = stop.best  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar

from featstore.errors import FeatstoreError

if TYPE_CHECKING:
    import torch

__all__ = ["EarlyStopping", "TrainingError", "resolve_device"]

State = TypeVar("State")


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
