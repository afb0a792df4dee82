"""The linear probe of the paper (Eq. 1), trained as the authors' code trains it.

Per-frame logit ``z_t = w . phi_t + b`` on per-frame L2-normalised features
``phi_t`` (option, default on); video logit ``s = logsumexp_t z_t``; loss =
cross-entropy over ``[-s, s]``, i.e. BCE on ``2s``, so the model's P(fake) is
``sigmoid(2s)``. The defaults are the authors' loop (bit-ml/ssr-dfd,
``linear_probing/``): one video per Adam step, lr 1e-3, ``nn.Linear``'s
initialisation, up to 100 epochs, early stopping with patience 10 on the
validation loss, best weights restored, seed 43, and the videos visited in the
order their training process draws (:class:`_AuthorsDraws`).

Each step is computed without autograd (:mod:`featstore.trainers.probe_step`: the
closed-form gradient, Adam on the vector ``[w, b]``), on the CPU by a compiled
loop over the whole epoch; it equals an ``nn.Linear`` + ``torch.optim.Adam``
loop step for step (tests/test_probe.py). Options, recorded in the run config:
``batch_videos`` (several videos per step, the mean loss, lr scaled by the
batch size with ``scale_lr``) and ``center_bias`` (start ``b`` at
``-log(median T)``, even odds); ``auto_batch_videos`` explains ``None``.

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
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import expit
from sklearn.metrics import roc_auc_score

from featstore.errors import FeatstoreError
from featstore.trainers.memory import plan_cache
from featstore.trainers.sources import (
    FeatureCache,
    VideoSource,
    concat_into,
    lengths_mask,
    prefetch_batches,
    row_norms,
)
from featstore.trainers.training import (
    Interruption,
    StateFunctions,
    TrainingControl,
    resolve_device,
    train_epochs,
)

if TYPE_CHECKING:  # the step kernels import numba: only a fit needs them
    from featstore.trainers.probe_step import CpuSteps, Packed, TorchSteps

log = logging.getLogger(__name__)

__all__ = [
    "RNG_SCHEMES",
    "EpochStats",
    "FitResult",
    "ProbeConfig",
    "ProbeError",
    "ProbeParams",
    "auto_batch_videos",
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
STREAM_CHUNK_VIDEOS = 64
# "authors": the draws of the authors' training process (_AuthorsDraws); "numpy": those of
# runs trained before it (init from a separate torch generator, numpy permutations).
RNG_SCHEMES = ("authors", "numpy")
# What a run config without ``rng`` was trained with (the defaults before the authors' loop was).
LEGACY_HYPERPARAMETERS = {
    "batch_videos": None,
    "scale_lr": True,
    "center_bias": True,
    "rng": "numpy",
}


class ProbeError(FeatstoreError, ValueError):
    """The probe cannot be trained or applied on these inputs."""


def auto_batch_videos(n_videos: int) -> int:
    """The batch size ``batch_videos=None`` means: ``clamp(n_videos // 512, 1, 16)``.

    An option (runs trained before one video per step became the default used
    it): fewer than 1,024 videos train one video per step, larger sets up to 16
    per step while keeping at least 512 steps per epoch. Batching alone would
    under-train: Adam moves each weight by about ``lr`` per step whatever the
    batch, so 8 videos per step at lr 1e-3 travel 8x less per epoch;
    ``ProbeConfig.scale_lr`` therefore steps with ``lr * B`` (linear scaling),
    which follows the one-video loss curve epoch for epoch (tests/test_probe.py).
    """
    if n_videos < 1:
        raise ProbeError(f"need at least one video, got {n_videos}")
    return int(min(MAX_AUTO_BATCH, max(1, n_videos // MIN_STEPS_PER_EPOCH)))


@dataclass(frozen=True)
class ProbeConfig:
    """Hyperparameters; the defaults are the authors' loop.

    - ``batch_videos``: videos per Adam step (1: the authors' loop; ``None``:
      :func:`auto_batch_videos`). A step over ``B`` videos minimises their mean
      loss at ``lr * B`` when ``scale_lr`` (``lr`` is per video), so larger
      batches travel as far per epoch.
    - ``center_bias``: start ``b`` at ``nn.Linear``'s draw ``- log(median T)``,
      so an untrained probe gives ``s ~ 0`` (P(fake) ~ 1/2) instead of
      ``s ~ log T``; small training sets then need fewer epochs.
    - ``rng``: ``"authors"`` (their process's draws, :class:`_AuthorsDraws`) or
      ``"numpy"`` (runs trained before; :class:`_NumpyDraws`).
    - ``device``: ``cpu`` runs the compiled loop; any other torch device the
      same steps in torch operations.
    - ``cache_bytes``: the memory budget for holding the videos (``None``:
      ``featstore.trainers.memory``'s default); like ``device`` it changes speed, not
      the model, and runs record it outside the hyperparameters.
    """

    l2_normalize: bool = True
    lr: float = 1e-3
    max_epochs: int = 100
    patience: int = 10
    batch_videos: int | None = 1
    seed: int = 43
    cache_bytes: int | None = None
    device: str = "cpu"
    scale_lr: bool = True
    center_bias: bool = False
    rng: str = "authors"

    def __post_init__(self) -> None:
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise ProbeError(f"lr must be a positive number, got {self.lr!r}")
        for name in ("max_epochs", "patience"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ProbeError(f"{name} must be an integer >= 1, got {value!r}")
        if self.batch_videos is not None and (
            not isinstance(self.batch_videos, int)
            or isinstance(self.batch_videos, bool)
            or self.batch_videos < 1
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
        if self.rng not in RNG_SCHEMES:
            raise ProbeError(f"rng must be one of {list(RNG_SCHEMES)}, got {self.rng!r}")
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
        """The config recorded in a run (unknown keys are an error).

        Runs recorded before ``rng`` existed were trained with the defaults of
        their time (``LEGACY_HYPERPARAMETERS``: auto batch, scaled lr, centred
        bias, numpy draws); missing keys take those, so the config still says
        what the run used. Other missing keys take today's defaults.
        """
        unknown = set(doc) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ProbeError(f"unknown probe hyperparameters {sorted(unknown)}")
        if "rng" not in doc:
            doc = {**LEGACY_HYPERPARAMETERS, **doc}
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
    """The restored best weights, the per-epoch history, and what the fit actually used:
    videos per step, the step's learning rate, and the engine (``numba`` on the CPU,
    ``torch`` on other devices)."""

    params: ProbeParams
    history: list[EpochStats]
    best_epoch: int
    stopped_early: bool
    batch_videos: int = 1
    lr: float = 1e-3
    engine: str = "numba"
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
    if lengths.shape[0] == 1:  # one video: nothing to pad
        return torch.logsumexp(z, dim=0, keepdim=True)
    mask = lengths_mask(lengths)  # [B, T]
    zp = z.new_full(mask.shape, float("-inf")).masked_scatter(mask, z)  # [B, T]
    return masked_logsumexp(zp, mask)  # [B]


# ----------------------------------------------------------------------------- scoring batches


@dataclass(frozen=True)
class _Batch:
    indices: np.ndarray  # [B]
    x: torch.Tensor  # [n, D] float32
    norms: torch.Tensor | None  # [n]
    lengths: torch.Tensor  # [B]


class _Feeder:
    """Batches of one source as float32 tensors (CPU), streamed with read-ahead."""

    def __init__(self, source: VideoSource, *, l2_normalize: bool) -> None:
        self.source, self.l2_normalize = source, l2_normalize
        self._buffer = torch.empty(0, source.dim, dtype=torch.float32)
        self._lengths = np.asarray(source.lengths, dtype=np.int64)

    def _buf(self, rows: int) -> torch.Tensor:
        if self._buffer.shape[0] < rows:
            self._buffer = torch.empty(rows, self.source.dim, dtype=torch.float32)
        return self._buffer

    def _make(self, idx: np.ndarray, arrays: list[np.ndarray]) -> _Batch:
        lengths = self._lengths[idx]
        x = concat_into(arrays, self._buf(int(lengths.sum())))  # [n, D]
        norms = None
        if self.l2_normalize:  # per video, exactly as FeatureCache computes them
            bounds = np.concatenate([[0], np.cumsum(lengths)])
            norms = torch.cat([row_norms(x[a:c]) for a, c in itertools.pairwise(bounds)])
        return _Batch(idx, x, norms, torch.from_numpy(lengths))

    @contextmanager
    def batches(self, order: Sequence[np.ndarray]) -> Iterator[Iterator[_Batch]]:
        stream = prefetch_batches(self.source, order)
        try:
            yield (self._make(idx, arrays) for idx, arrays in stream)
        finally:
            stream.close()


def _scores(
    feeder: _Feeder, w: torch.Tensor, b: torch.Tensor, batch_videos: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    n = len(feeder.source)
    order = [np.arange(i, min(i + batch_videos, n)) for i in range(0, n, batch_videos)]
    scores = np.empty(n, dtype=np.float32)
    frames: list[np.ndarray] = []
    with torch.no_grad(), feeder.batches(order) as batches:
        for batch in batches:
            z = _frame_logits(w, b, batch.x, batch.norms)  # [n]
            scores[batch.indices] = _video_logits(z, batch.lengths).numpy()
            frames.extend(t.numpy() for t in z.split(batch.lengths.tolist()))
    return scores, frames


# ----------------------------------------------------------------------------- random draws


class _AuthorsDraws:
    """The random draws of the authors' training process, from one generator seeded ``seed``.

    Their script seeds torch's global generator (``torch.manual_seed(43)``),
    builds ``nn.Linear(D, 1)`` (``kaiming_uniform_(a=sqrt(5))`` weight, then a
    ``U(-1/sqrt(D), 1/sqrt(D))`` bias), and Lightning runs the epochs. In each,
    the training DataLoader's iterator draws a base seed for its workers, its
    ``RandomSampler`` draws the seed of the epoch's permutation
    (``torch.randperm`` on a fresh generator), and after the epoch the
    validation DataLoader's iterator draws its base seed (the sanity check
    before training runs under Lightning's ``isolate_rng`` and leaves no trace).
    Replayed draw for draw here on a private generator (the global one is left
    alone). Checked against their code run with lightning 2.4.0: the same
    weights, bit for bit, after 25 epochs.
    """

    def __init__(self, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)

    def init(self, dim: int) -> tuple[np.ndarray, float]:
        w = torch.empty(1, dim)
        b = torch.empty(1)
        torch.nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=self.gen)
        bound = 1.0 / math.sqrt(dim)
        torch.nn.init.uniform_(b, -bound, bound, generator=self.gen)
        return w[0].numpy(), float(b[0])

    def _seed(self) -> int:
        return int(torch.empty((), dtype=torch.int64).random_(generator=self.gen).item())

    def epoch_order(self, n: int) -> np.ndarray:
        self._seed()  # the training DataLoader iterator's worker base seed
        perm_gen = torch.Generator().manual_seed(self._seed())  # RandomSampler's
        return torch.randperm(n, generator=perm_gen).numpy()

    def validated(self) -> None:
        self._seed()  # the validation DataLoader iterator's worker base seed

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.gen.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.gen.set_state(state["generator"])


class _NumpyDraws:
    """The draws of runs trained before (``rng="numpy"``): init from
    ``torch.Generator().manual_seed(seed)`` as ``(rand * 2 - 1) / sqrt(D)``,
    permutations from ``np.random.default_rng(seed)``."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def init(self, dim: int) -> tuple[np.ndarray, float]:
        gen = torch.Generator().manual_seed(self.seed)
        bound = 1.0 / math.sqrt(dim)
        w = (torch.rand(dim, generator=gen) * 2 - 1) * bound
        b = (torch.rand(1, generator=gen) * 2 - 1) * bound
        return w.numpy(), float(b[0])

    def epoch_order(self, n: int) -> np.ndarray:
        return self.rng.permutation(n)

    def validated(self) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.rng.bit_generator.state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.rng.bit_generator.state = dict(state["generator"])


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


def _pack(
    arrays: Sequence[np.ndarray], labels: np.ndarray, *, half: bool, l2_normalize: bool
) -> Packed:
    """Videos ``[T_i, D]`` end to end as the step kernels read them (norms as FeatureCache's)."""
    from featstore.trainers.probe_step import Packed

    data = np.concatenate([np.asarray(a, np.float16 if half else np.float32) for a in arrays])
    offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
    np.cumsum([a.shape[0] for a in arrays], out=offsets[1:])
    if l2_normalize:
        norms = np.concatenate(
            [row_norms(torch.from_numpy(np.asarray(a, np.float32))).numpy() for a in arrays]
        )
    else:
        norms = np.ones(data.shape[0], dtype=np.float32)
    return Packed(
        data.view(np.uint16) if half else data,
        offsets,
        norms,
        np.asarray(labels, dtype=np.float64),
    )


class _Videos:
    """One source as :class:`Packed` blocks: held whole in memory, or read chunk by chunk."""

    def __init__(self, source: VideoSource, *, cached: bool, l2_normalize: bool) -> None:
        from featstore.trainers.probe_step import Packed

        self.source, self.l2_normalize = source, l2_normalize
        self.half = np.dtype(source.dtype) == np.float16
        self.labels = np.asarray(source.labels, dtype=np.float64)
        self.whole: Packed | None = None
        if cached:
            cache = FeatureCache(source)
            data = cache.data.numpy()
            norms = cache.norms.numpy()
            if not l2_normalize:
                norms = np.ones_like(norms)
            self.whole = Packed(
                data.view(np.uint16) if self.half else data, cache.offsets, norms, self.labels
            )

    def blocks(self, order: np.ndarray, group: int) -> Iterator[tuple[Packed, np.ndarray]]:
        """``(block, order within it)`` covering ``order``; streamed blocks hold whole groups."""
        if self.whole is not None:
            yield self.whole, order
            return
        size = group * max(1, STREAM_CHUNK_VIDEOS // group)
        chunks = [order[i : i + size] for i in range(0, len(order), size)]
        stream = prefetch_batches(self.source, chunks)
        try:
            for idx, arrays in stream:
                block = _pack(
                    arrays, self.labels[idx], half=self.half, l2_normalize=self.l2_normalize
                )
                yield block, np.arange(len(idx))
        finally:
            stream.close()

    def logits(self, steps: CpuSteps | TorchSteps) -> np.ndarray:
        """Video logits ``[N]`` in source order."""
        n = len(self.source)
        return np.concatenate(
            [steps.logits(block) for block, _ in self.blocks(np.arange(n), STREAM_CHUNK_VIDEOS)]
        )


def fit_probe(
    train: VideoSource,
    val: VideoSource | None = None,
    config: ProbeConfig = ProbeConfig(),  # frozen, so sharing the default is safe
    *,
    on_epoch: Callable[[EpochStats], None] | None = None,
    control: TrainingControl | None = None,
) -> FitResult:
    """Train the probe on ``train``; early-stop on ``val``'s loss and restore the best weights.

    An epoch visits every training video once, in the order ``config.rng``
    draws, ``batch_videos`` per step; its ``val_loss`` is the mean loss over
    the validation videos after it. Without ``val`` it trains all
    ``max_epochs`` epochs and returns the last weights (no early stopping: the
    training loss keeps falling on separable data, so stopping on it would
    only ever fire on noise). Sources whose bytes fit in ``cache_bytes``
    (train first, then val; ``None``: ``featstore.trainers.memory``'s default) are held
    in memory; the rest are read chunk by chunk with read-ahead, in the same
    order, to the same weights. ``control`` checkpoints, resumes
    and catches interrupts (``featstore.trainers.training``; the result's
    ``interruption`` says when one ended the fit).
    """
    from featstore.trainers.probe_step import CpuSteps, TorchSteps

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
    lr = config.lr * bsz if config.scale_lr else config.lr

    train_cached, val_cached = plan_cache(
        config.cache_bytes,
        train_bytes=int(train.nbytes),
        val_bytes=None if val is None else int(val.nbytes),
    )
    videos = _Videos(train, cached=train_cached, l2_normalize=config.l2_normalize)
    val_videos = None
    if val is not None:
        val_videos = _Videos(val, cached=val_cached, l2_normalize=config.l2_normalize)
    draws = _AuthorsDraws(config.seed) if config.rng == "authors" else _NumpyDraws(config.seed)
    w0, b0 = draws.init(train.dim)
    if config.center_bias:
        b0 -= math.log(max(float(np.median(np.asarray(train.lengths))), 1.0))
    params = np.append(w0, np.float32(b0)).astype(np.float32)  # [D+1]
    steps = CpuSteps(params) if device.type == "cpu" else TorchSteps(params, device)
    engine = "numba" if device.type == "cpu" else "torch"
    log.info(
        "probe: %d videos, %d per step at lr %g, train %s, %s on %s",
        len(train),
        bsz,
        lr,
        "cached" if train_cached else "streamed",
        engine,
        device,
    )
    val_labels = None if val is None else np.asarray(val.labels)

    def run_epoch(epoch: int) -> tuple[EpochStats, float | None]:
        start = time.perf_counter()
        order = draws.epoch_order(len(train))
        total = 0.0
        for block, block_order in videos.blocks(order, bsz):
            total += steps.train(block, block_order, bsz, lr)
        train_loss = total / len(train)
        if not math.isfinite(train_loss):
            raise ProbeError(
                f"training loss is {train_loss} at epoch {epoch}: check the features for NaN/inf"
            )
        val_loss = val_auc = None
        if val_videos is not None and val_labels is not None:
            draws.validated()
            s = val_videos.logits(steps)  # [N_val] float64
            val_loss = float(np.mean(np.logaddexp(0.0, 2.0 * s * (1.0 - 2.0 * val_labels))))
            if val_labels.min() != val_labels.max():
                val_auc = float(roc_auc_score(val_labels, s))
        stats = EpochStats(epoch, train_loss, val_loss, val_auc, time.perf_counter() - start)
        return stats, val_loss

    def save_state() -> dict[str, Any]:
        return {"steps": steps.state_dict(), "draws": draws.state_dict()}

    def load_state(state: Mapping[str, Any]) -> None:
        steps.load_state_dict(state["steps"])
        draws.load_state_dict(state["draws"])

    loop = train_epochs(
        run_epoch,
        max_epochs=config.max_epochs,
        patience=config.patience,
        snapshot=steps.weights,
        state=StateFunctions(save_state, load_state),
        stats_type=EpochStats,
        on_epoch=on_epoch,
        control=control,
    )
    best = loop.best
    params_out = ProbeParams(w=best[:-1], b=float(best[-1]), l2_normalize=config.l2_normalize)
    return FitResult(
        params_out,
        loop.history,
        loop.best_epoch,
        loop.stopped_early,
        bsz,
        lr,
        engine,
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
    feeder = _Feeder(source, l2_normalize=params.l2_normalize)
    w, b = _as_tensors(params)
    return _scores(feeder, w, b, batch_videos)


def probability(score: float | np.ndarray) -> float | np.ndarray:
    """The model's P(fake) for video logit(s) ``s``: ``sigmoid(2 s)``, as the loss defines it."""
    p = expit(2.0 * np.asarray(score, dtype=np.float64))
    return float(p) if np.ndim(p) == 0 else p
