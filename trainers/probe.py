"""The linear probe of the paper (Eq. 1), trained as the authors' code trains it.

Per-frame logit ``z_t = w . phi_t + b`` on per-frame L2-normalised features
``phi_t`` (option, default on); video logit ``s = logsumexp_t z_t``; loss =
cross-entropy over ``[-s, s]``, i.e. BCE on ``2s``, so the model's P(fake) is
``sigmoid(2s)``; Adam lr 1e-3; up to 100 epochs; early stopping with
patience 10 on validation loss, best weights restored; seed 43.

The authors step once per video. Here a step takes ``B`` videos: their
frames are concatenated (no feature padding), frame logits are padded into
``[B, T]`` with ``-inf`` outside each video before the logsumexp, and the
batch loss is the mean of the per-video losses, so with ``B = 1`` training is
the authors' loop step for step. Larger batches step with ``lr * B``
(``ProbeConfig.scale_lr``); ``auto_batch_videos`` explains the default B.

>>> result = fit_probe(train_source, val_source)  # doctest: +SKIP
>>> scores, frames = score_source(result.params, test_source)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import expit
from sklearn.metrics import roc_auc_score

from featstore.errors import FeatstoreError
from trainers.memory import plan_cache
from trainers.sources import (
    FeatureCache,
    VideoSource,
    batch_order,
    concat_into,
    lengths_mask,
    prefetch_batches,
    row_norms,
)
from trainers.training import (
    Interruption,
    StateFunctions,
    TrainingControl,
    resolve_device,
    train_epochs,
)

log = logging.getLogger(__name__)

__all__ = [
    "EpochStats",
    "FitResult",
    "ProbeConfig",
    "ProbeError",
    "ProbeParams",
    "auto_batch_videos",
    "batch_loss",
    "fit_probe",
    "frame_logits",
    "masked_logsumexp",
    "probability",
    "score_source",
    "video_logit",
    "video_losses",
]

NORM_EPS = 1e-12  # as torch.nn.functional.normalize: phi = x / max(|x|, eps)
MIN_STEPS_PER_EPOCH = 512
MAX_AUTO_BATCH = 16


class ProbeError(FeatstoreError, ValueError):
    """The probe cannot be trained or applied on these inputs."""


def auto_batch_videos(n_videos: int) -> int:
    """The default videos per step: ``clamp(n_videos // 512, 1, 16)``.

    Fewer than 1,024 videos train one video per step, exactly the authors'
    loop (such sets take seconds anyway). Larger sets take up to 16 videos per
    step, which amortises the per-step overhead (a CPU step over 16 videos
    costs about a third per video of a one-video step, bench/probe.py) while
    keeping at least 512 steps per epoch. Batching alone would under-train:
    Adam moves each weight by about ``lr`` per step whatever the batch, so 8
    videos per step at lr 1e-3 travel 8x less per epoch (40 videos by 8 were
    still far from the one-video loss after 100 epochs). ``ProbeConfig.scale_lr``
    therefore steps with ``lr * B`` (linear scaling), which follows the
    one-video loss curve epoch for epoch (tests/test_probe.py, bench/probe.py).
    """
    if n_videos < 1:
        raise ProbeError(f"need at least one video, got {n_videos}")
    return int(min(MAX_AUTO_BATCH, max(1, n_videos // MIN_STEPS_PER_EPOCH)))


@dataclass(frozen=True)
class ProbeConfig:
    """Hyperparameters; the defaults are the authors'.

    ``lr`` is per video: with ``scale_lr`` a step over ``B`` videos uses
    ``lr * B``, so ``B = 1`` is the authors' loop and larger batches travel as
    far per epoch. ``batch_videos=None`` means ``auto_batch_videos(len(train))``.
    ``cache_bytes`` is the memory budget for holding the videos (``None``:
    ``trainers.memory``'s default); like ``device`` it changes speed, not the
    model, and runs record it outside the hyperparameters.
    """

    l2_normalize: bool = True
    lr: float = 1e-3
    max_epochs: int = 100
    patience: int = 10
    batch_videos: int | None = None
    seed: int = 43
    cache_bytes: int | None = None
    device: str = "cpu"
    scale_lr: bool = True
    center_bias: bool = True

    def __post_init__(self) -> None:
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise ProbeError(f"lr must be a positive number, got {self.lr!r}")
        for name in ("max_epochs", "patience"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ProbeError(f"{name} must be an integer >= 1, got {value!r}")
        if self.batch_videos is not None and (
            not isinstance(self.batch_videos, int) or self.batch_videos < 1
        ):
            raise ProbeError(f"batch_videos must be None (auto) or >= 1, got {self.batch_videos!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ProbeError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.cache_bytes is not None and (
            isinstance(self.cache_bytes, bool)
            or not isinstance(self.cache_bytes, int)
            or self.cache_bytes < 0
        ):
            raise ProbeError(
                f"cache_bytes must be None or an integer >= 0, got {self.cache_bytes!r}"
            )
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError) as exc:
            raise ProbeError(f"unknown device {self.device!r}") from exc

    def to_dict(self) -> dict[str, Any]:
        """The hyperparameters a run records (``cache_bytes`` is an execution detail: not here)."""
        doc = dataclasses.asdict(self)
        del doc["cache_bytes"]
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> ProbeConfig:
        """The config recorded in a run (unknown keys are an error, missing ones take defaults)."""
        unknown = set(doc) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ProbeError(f"unknown probe hyperparameters {sorted(unknown)}")
        return cls(**doc)


@dataclass(frozen=True)
class ProbeParams:
    """A trained probe: ``w [D]`` float32, bias ``b``, and whether frames are L2-normalised."""

    w: np.ndarray
    b: float
    l2_normalize: bool

    def __post_init__(self) -> None:
        w = np.asarray(self.w, dtype=np.float32)
        if w.ndim != 1 or w.size == 0:
            raise ProbeError(f"w must be a non-empty vector [D], got shape {w.shape}")
        object.__setattr__(self, "w", w)
        object.__setattr__(self, "b", float(self.b))
        object.__setattr__(self, "l2_normalize", bool(self.l2_normalize))

    @property
    def dim(self) -> int:
        return int(self.w.shape[0])

    def to_state(self) -> dict[str, np.ndarray]:
        """Tensors for safetensors: ``w [D]`` float32, ``b [1]`` float32, ``l2_normalize [1]`` uint8."""
        return {
            "w": self.w.copy(),
            "b": np.array([self.b], dtype=np.float32),
            "l2_normalize": np.array([int(self.l2_normalize)], dtype=np.uint8),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ProbeParams:
        missing = {"w", "b", "l2_normalize"} - set(state)
        if missing:
            raise ProbeError(f"probe state lacks {sorted(missing)}")
        b, l2 = np.asarray(state["b"]).ravel(), np.asarray(state["l2_normalize"]).ravel()
        if b.size != 1 or l2.size != 1:
            raise ProbeError(
                f"probe state: b and l2_normalize must hold one value each, got {b.size} and {l2.size}"
            )
        return cls(w=np.asarray(state["w"]), b=float(b[0]), l2_normalize=bool(l2[0]))


@dataclass(frozen=True)
class EpochStats:
    """One epoch (1-based): mean training loss over its steps, validation loss and AUC."""

    epoch: int
    train_loss: float
    val_loss: float | None
    val_auc: float | None
    seconds: float


@dataclass(frozen=True)
class FitResult:
    """The restored best weights, the per-epoch history, and the batch size and lr actually used."""

    params: ProbeParams
    history: list[EpochStats]
    best_epoch: int
    stopped_early: bool
    batch_videos: int = 1
    lr: float = 1e-3
    interruption: Interruption | None = None  # set when SIGINT/SIGTERM ended the fit early
    resumed_from: int | None = None  # the checkpoint epoch the fit continued from


# ----------------------------------------------------------------------------- maths


def masked_logsumexp(z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Video logits ``[B]`` from frame logits ``z [B, T]``; frames where ``mask`` is False count as -inf."""
    return torch.logsumexp(z.masked_fill(~mask, float("-inf")), dim=1)


def video_losses(s: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-video cross-entropy over ``[-s, s]`` = BCE on ``2s`` -> ``[B]``."""
    return F.binary_cross_entropy_with_logits(2.0 * s, labels.to(s.dtype), reduction="none")


def _frame_logits(
    w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, norms: torch.Tensor | None
) -> torch.Tensor:
    z = torch.mv(x, w)  # [n]; w . (x / |x|) == (w . x) / |x|: no pass over a normalised copy
    if norms is not None:
        z = z / norms.clamp_min(NORM_EPS)
    return z + b


def _video_logits(z: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    if lengths.shape[0] == 1:  # one video: nothing to pad (the authors' case, and the hot path)
        return torch.logsumexp(z, dim=0, keepdim=True)
    mask = lengths_mask(lengths)  # [B, T]
    zp = z.new_full(mask.shape, float("-inf")).masked_scatter(mask, z)  # [B, T]
    return masked_logsumexp(zp, mask)  # [B]


def batch_loss(
    w: torch.Tensor,
    b: torch.Tensor,
    x: torch.Tensor,
    norms: torch.Tensor | None,
    lengths: torch.Tensor,
    labels: torch.Tensor,
) -> torch.Tensor:
    """Mean per-video loss of a ragged batch: ``x [n, D]`` holds the videos end to end.

    ``w [D]``, ``b [1]``; ``norms [n]`` are the frames' L2 norms (None: no
    normalisation); ``lengths [B]`` sum to ``n``; ``labels [B]`` (1 = fake).
    """
    s = _video_logits(_frame_logits(w, b, x, norms), lengths)  # [B]
    return video_losses(s, labels).mean()


# ----------------------------------------------------------------------------- batches


@dataclass(frozen=True)
class _Batch:
    indices: np.ndarray  # [B]
    x: torch.Tensor  # [n, D] float32
    norms: torch.Tensor | None  # [n]
    lengths: torch.Tensor  # [B]


class _Feeder:
    """Batches of one source as float32 tensors on the device, from a cache or streamed."""

    def __init__(
        self, source: VideoSource, *, cached: bool, l2_normalize: bool, device: torch.device
    ) -> None:
        self.source, self.l2_normalize, self.device = source, l2_normalize, device
        self.cache = FeatureCache(source) if cached else None
        self._buffer = torch.empty(0, source.dim, dtype=torch.float32)
        self._lengths = np.asarray(source.lengths, dtype=np.int64)

    def _buf(self, rows: int) -> torch.Tensor:
        if self._buffer.shape[0] < rows:
            self._buffer = torch.empty(rows, self.source.dim, dtype=torch.float32)
        return self._buffer

    def _make(self, idx: np.ndarray, arrays: list[np.ndarray] | None) -> _Batch:
        lengths = self._lengths[idx]
        buf = self._buf(int(lengths.sum()))
        if self.cache is not None:
            x, norms = self.cache.gather_into(idx, buf)
        else:
            x = concat_into(arrays or [], buf)  # [n, D]
            norms = None
            if self.l2_normalize:  # per video, exactly as FeatureCache computes them
                bounds = np.concatenate([[0], np.cumsum(lengths)])
                norms = torch.cat([row_norms(x[a:c]) for a, c in itertools.pairwise(bounds)])
        if not self.l2_normalize:
            norms = None
        if self.device.type != "cpu":
            x = x.to(self.device)
            norms = None if norms is None else norms.to(self.device)
        return _Batch(idx, x, norms, torch.from_numpy(lengths).to(self.device))

    @contextmanager
    def batches(self, order: Sequence[np.ndarray]) -> Iterator[Iterator[_Batch]]:
        if self.cache is not None:
            yield (self._make(idx, None) for idx in order)
            return
        stream = prefetch_batches(self.source, order)
        try:
            yield (self._make(idx, arrays) for idx, arrays in stream)
        finally:
            stream.close()


def _scores(
    feeder: _Feeder, w: torch.Tensor, b: torch.Tensor, batch_videos: int, *, keep_frames: bool
) -> tuple[np.ndarray, list[np.ndarray]]:
    n = len(feeder.source)
    order = [np.arange(i, min(i + batch_videos, n)) for i in range(0, n, batch_videos)]
    scores = np.empty(n, dtype=np.float32)
    frames: list[np.ndarray] = []
    with torch.no_grad(), feeder.batches(order) as batches:
        for batch in batches:
            z = _frame_logits(w, b, batch.x, batch.norms)  # [n]
            scores[batch.indices] = _video_logits(z, batch.lengths).cpu().numpy()
            if keep_frames:
                frames.extend(t.numpy() for t in z.cpu().split(batch.lengths.tolist()))
    return scores, frames


# ----------------------------------------------------------------------------- training


def _check_source(source: VideoSource, what: str) -> None:
    if len(source) == 0:
        raise ProbeError(f"the {what} source holds no videos")
    lengths = np.asarray(source.lengths)
    if lengths.shape != (len(source),) or (lengths < 1).any():
        raise ProbeError(f"the {what} source has videos without frames")
    labels = np.asarray(source.labels)
    if labels.shape != (len(source),) or not np.isin(labels, (0, 1)).all():
        raise ProbeError(f"the {what} source needs one 0/1 label per video")


def _init_params(dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.nn.Linear(dim, 1)``'s default init: w and b ~ U(-1/sqrt(dim), 1/sqrt(dim))."""
    gen = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(dim)
    w = (torch.rand(dim, generator=gen) * 2 - 1) * bound
    b = (torch.rand(1, generator=gen) * 2 - 1) * bound
    return w, b


def fit_probe(
    train: VideoSource,
    val: VideoSource | None = None,
    config: ProbeConfig = ProbeConfig(),  # frozen, so sharing the default is safe
    *,
    on_epoch: Callable[[EpochStats], None] | None = None,
    control: TrainingControl | None = None,
) -> FitResult:
    """Train the probe on ``train``; early-stop on ``val``'s loss and restore the best weights.

    Without ``val`` it trains all ``max_epochs`` epochs and returns the last
    weights (no early stopping: the training loss keeps falling on separable
    data, so stopping on it would only ever fire on noise). Each epoch visits
    the videos in ``np.random.default_rng(seed).permutation`` order (one
    generator for the whole fit); weights start as ``torch.nn.Linear``'s init
    from ``torch.Generator().manual_seed(seed)``. Sources whose bytes fit in
    ``cache_bytes`` (train first, then val; ``None``: ``trainers.memory``'s
    default) are held in memory; the rest are streamed with read-ahead, in
    the same batches, to the same weights. ``control`` checkpoints, resumes
    and catches interrupts (``trainers.training``; the result's
    ``interruption`` says when one ended the fit).
    """
    _check_source(train, "training")
    labels = np.asarray(train.labels)
    if labels.min() == labels.max():
        kind = "fake" if labels[0] == 1 else "real"
        raise ProbeError(
            f"all {len(train)} training videos are {kind}; the probe needs both classes"
        )
    if val is not None:
        _check_source(val, "validation")
        if val.dim != train.dim:
            raise ProbeError(
                f"validation features are {val.dim}-wide, training features {train.dim}-wide"
            )
    device = resolve_device(config.device, error=ProbeError)
    bsz = config.batch_videos or auto_batch_videos(len(train))

    train_cached, val_cached = plan_cache(
        config.cache_bytes,
        train_bytes=int(train.nbytes),
        val_bytes=None if val is None else int(val.nbytes),
    )
    feed = _Feeder(train, cached=train_cached, l2_normalize=config.l2_normalize, device=device)
    val_feed = None
    if val is not None:
        val_feed = _Feeder(val, cached=val_cached, l2_normalize=config.l2_normalize, device=device)
    log.info(
        "probe: %d videos, %d per step, train %s",
        len(train),
        bsz,
        "cached" if train_cached else "streamed",
    )

    w0, b0 = _init_params(train.dim, config.seed)
    if config.center_bias:
        b0 = b0 - math.log(max(float(np.median(np.asarray(train.lengths))), 1.0))
    w = w0.to(device).requires_grad_(True)
    b = b0.to(device).requires_grad_(True)
    lr = config.lr * bsz if config.scale_lr else config.lr
    opt = torch.optim.Adam([w, b], lr=lr)
    rng = np.random.default_rng(config.seed)
    train_labels = torch.from_numpy(labels.astype(np.float32)).to(device)
    val_labels = None if val is None else np.asarray(val.labels)

    def run_epoch(epoch: int) -> tuple[EpochStats, float | None]:
        start = time.perf_counter()
        total = torch.zeros((), dtype=torch.float64, device=device)
        with feed.batches(batch_order(len(train), bsz, rng)) as batches:
            for batch in batches:
                loss = batch_loss(
                    w, b, batch.x, batch.norms, batch.lengths, train_labels[batch.indices]
                )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.detach() * len(batch.indices)
        train_loss = float(total) / len(train)
        if not math.isfinite(train_loss):
            raise ProbeError(
                f"training loss is {train_loss} at epoch {epoch}: check the features for NaN/inf"
            )
        val_loss = val_auc = None
        if val_feed is not None and val_labels is not None:
            s, _ = _scores(val_feed, w.detach(), b.detach(), 64, keep_frames=False)
            val_loss = float(
                video_losses(
                    torch.from_numpy(s).double(), torch.from_numpy(val_labels).double()
                ).mean()
            )
            if val_labels.min() != val_labels.max():
                val_auc = float(roc_auc_score(val_labels, s))
        stats = EpochStats(epoch, train_loss, val_loss, val_auc, time.perf_counter() - start)
        return stats, val_loss

    def save_state() -> dict[str, Any]:
        return {"w": w, "b": b, "optimizer": opt.state_dict(), "rng": rng.bit_generator.state}

    def load_state(state: Mapping[str, Any]) -> None:
        with torch.no_grad():
            w.copy_(state["w"])
            b.copy_(state["b"])
        opt.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["rng"]

    loop = train_epochs(
        run_epoch,
        max_epochs=config.max_epochs,
        patience=config.patience,
        snapshot=lambda: (w.detach().clone(), b.detach().clone()),
        state=StateFunctions(save_state, load_state),
        stats_type=EpochStats,
        on_epoch=on_epoch,
        control=control,
    )
    w_best, b_best = loop.best
    params = ProbeParams(
        w=w_best.cpu().numpy(), b=float(b_best.cpu()[0]), l2_normalize=config.l2_normalize
    )
    return FitResult(
        params,
        loop.history,
        loop.best_epoch,
        loop.stopped_early,
        bsz,
        lr,
        interruption=loop.interruption,
        resumed_from=loop.resumed_from,
    )


# ----------------------------------------------------------------------------- scoring


def _as_tensors(params: ProbeParams) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(params.w), torch.tensor([params.b], dtype=torch.float32)


def frame_logits(params: ProbeParams, x: np.ndarray) -> np.ndarray:
    """Per-frame logits ``[T]`` of one video ``x [T, D]`` (the paper's temporal explanation)."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != params.dim or x.shape[0] == 0:
        raise ProbeError(f"expected features [T>0, {params.dim}], got {x.shape}")
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))  # [T, D]
    norms = row_norms(xt) if params.l2_normalize else None
    w, b = _as_tensors(params)
    with torch.no_grad():
        return _frame_logits(w, b, xt, norms).numpy()


def video_logit(params: ProbeParams, x: np.ndarray) -> float:
    """The video logit ``s = logsumexp_t z_t`` of one video ``x [T, D]``."""
    return float(torch.logsumexp(torch.from_numpy(frame_logits(params, x)), dim=0))


def score_source(
    params: ProbeParams, source: VideoSource, *, batch_videos: int = 64
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Video logits ``[N]`` and per-frame logits (``[T_i]`` each) of every video, in source order."""
    if len(source) == 0:
        return np.empty(0, dtype=np.float32), []
    if source.dim != params.dim:
        raise ProbeError(f"source features are {source.dim}-wide, the probe expects {params.dim}")
    if batch_videos < 1:
        raise ProbeError(f"batch_videos must be >= 1, got {batch_videos}")
    feeder = _Feeder(
        source, cached=False, l2_normalize=params.l2_normalize, device=torch.device("cpu")
    )
    w, b = _as_tensors(params)
    return _scores(feeder, w, b, batch_videos, keep_frames=True)


def probability(score: float | np.ndarray) -> float | np.ndarray:
    """The model's P(fake) for video logit(s) ``s``: ``sigmoid(2 s)``, as the loss defines it."""
    p = expit(2.0 * np.asarray(score, dtype=np.float64))
    return float(p) if np.ndim(p) == 0 else p
