"""Training curves to TensorBoard (``featstore train ... --tensorboard DIR``), optional.

Each epoch's record (``EpochStats`` of any trained kind: a frozen dataclass
with ``epoch`` and numbers such as ``train_loss``, ``val_loss``,
``val_auc``, ``lr``, ``seconds``) becomes one scalar per number at step
``epoch``, named ``loss/train``, ``loss/val``, ``auc/val``, ``lr``, ...
The writer is ``torch.utils.tensorboard.SummaryWriter``, which needs the
``tensorboard`` package (the ``tensorboard`` extra); without it
:func:`open_curves` raises :class:`TensorBoardUnavailableError` before any
training starts.

>>> with open_curves("tb/probe-w2v") as curves:  # doctest: +SKIP
...     fit_probe(train, val, on_epoch=curves.log)
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

from featstore.errors import FeatstoreError

__all__ = ["SCALAR_NAMES", "CurveWriter", "TensorBoardUnavailableError", "open_curves"]

# Field of an epoch record -> TensorBoard tag (other numeric fields keep their name).
SCALAR_NAMES = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "val_auc": "auc/val",
    "lr": "lr",
    "seconds": "time/epoch_s",
}


class TensorBoardUnavailableError(FeatstoreError):
    """``--tensorboard`` was asked for but TensorBoard's writer cannot be imported."""


class CurveWriter:
    """Writes epoch records as TensorBoard scalars; use as a context manager."""

    def __init__(self, log_dir: str | os.PathLike[str]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self._writer = SummaryWriter(log_dir=str(self.log_dir))

    def log(self, stats: Any) -> None:
        """One epoch: every finite number of ``stats`` (a dataclass) but ``epoch``."""
        record = dataclasses.asdict(stats) if dataclasses.is_dataclass(stats) else dict(stats)
        step = int(record["epoch"])
        for name, value in record.items():
            if name == "epoch" or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if math.isfinite(value):
                self._writer.add_scalar(SCALAR_NAMES.get(name, name), float(value), step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> CurveWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_curves(log_dir: str | os.PathLike[str]) -> CurveWriter:
    """A :class:`CurveWriter` into ``log_dir`` (created), or a clear error without TensorBoard."""
    try:
        import torch.utils.tensorboard  # noqa: F401 - needs the tensorboard package
    except ImportError as exc:
        raise TensorBoardUnavailableError(
            "--tensorboard needs the tensorboard package: pip install 'featstore[tensorboard]' "
            f"(or pip install tensorboard); {exc}"
        ) from None
    return CurveWriter(log_dir)
