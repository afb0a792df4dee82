"""Weight-free signal baselines: AV-HuBERT's own inputs, stored as features.

- ``logfbank`` (audio): 26-band log mel filterbank at 100 Hz, 4 frames stacked into one
  104-d row at 25 Hz, each row layer-normalised (zero mean, unit variance, no affine),
  which is exactly what AV-HuBERT's ``Linear(104 -> 1024)`` audio front end receives.
- ``mouth-pixels`` (visual): the 96x96 grey mouth ROI centre-cropped to 88x88 (AV-HuBERT's
  test-time input), area-downsampled to 22x22 = 484 dims, ``/ 255`` then
  ``(x - 0.421) / 0.165``.

Both are numpy-only: ``device`` and the compute ``dtype`` are accepted and ignored, a
``checkpoint`` is refused (:class:`CheckpointError`: there are no weights to load), and
``random_init=True`` is accepted but changes nothing (there are no weights to
randomise); the loaded encoder records ``random_init=False`` since its features are
the same either way. Each has one layer, ``"last"``.

Row counts follow the 25 fps timebase: ``logfbank`` gives ``samples // 640`` rows (the
whole 25 fps frames in the clip; see :func:`logfbank_rows`), ``mouth-pixels`` one row
per mouth crop.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from featstore.encoders import register
from featstore.encoders.base import (
    CheckpointError,
    Clip,
    ClipError,
    Encoder,
    EncoderError,
    EncoderSpec,
)
from featstore.encoders.fbank import layer_norm_rows, logfbank, stack_frames
from featstore.layout import LAST, Layer
from featstore.timebase import FRAME_HZ, SAMPLE_RATE_HZ, SAMPLES_PER_FRAME

if TYPE_CHECKING:
    from featstore.spatial.base import SpatialExplainer

log = logging.getLogger(__name__)

__all__ = [
    "LOGFBANK",
    "MOUTH_PIXELS",
    "LogFbankEncoder",
    "MouthPixelsEncoder",
    "logfbank_rows",
    "mouth_pixel_rows",
]

STACK = 4  # 100 Hz filterbank frames per 25 Hz row
N_FILTERS = 26
INT16_SCALE = 32768.0  # AV-HuBERT reads int16 wav files (scipy wavfile): same scale here
MOUTH_ROI = 96  # featstore.crops.MOUTH_SIZE
MOUTH_CROP = 88  # AV-HuBERT's centre crop at test time
POOL = 4  # 88 / 4 = 22 pixels a side
MOUTH_MEAN, MOUTH_STD = 0.421, 0.165

LOGFBANK = EncoderSpec(
    name="logfbank",
    family="baselines",
    modality="audio",
    crop="none",
    frame_hz=FRAME_HZ,
    dim=STACK * N_FILTERS,
    n_layers=0,  # no blocks: the only layer is "last"
    default_checkpoint=None,
    description=(
        "AV-HuBERT's audio input: 26-band log mel filterbank (25 ms / 10 ms), 4 frames "
        "stacked to 104 dims at 25 Hz, each row layer-normalised; no weights"
    ),
)
MOUTH_PIXELS = EncoderSpec(
    name="mouth-pixels",
    family="baselines",
    modality="visual",
    crop="mouth",
    frame_hz=FRAME_HZ,
    dim=(MOUTH_CROP // POOL) ** 2,
    n_layers=0,
    default_checkpoint=None,
    description=(
        "AV-HuBERT's visual input: grey 96x96 mouth ROI, 88x88 centre crop, area-downsampled "
        "to 22x22 = 484 dims, normalised (x / 255 - 0.421) / 0.165; no weights"
    ),
)


def logfbank_rows(audio: np.ndarray, *, video_id: str = "") -> np.ndarray:
    """``[S]`` float audio at 16 kHz -> ``[S // 640, 104]`` float32 layer-normalised rows.

    The samples are scaled to the int16 range AV-HuBERT reads: the layer norm removes
    the constant log offset of a full row, but not in a last row holding zero padding,
    nor where energies reach the log's floor, so the scale matters there. The
    stacked rows number ``ceil(F / 4)`` with ``F = 1 + ceil((S - 400) / 160)`` filterbank
    frames, which is never fewer than ``S // 640`` for ``S >= 640``; rows past
    ``S // 640`` (a trailing partial 25 fps frame) are dropped, as AV-HuBERT trims audio
    rows to the video's frame count. Zero rows would be appended were any missing
    (AV-HuBERT's padding, zeros before the layer norm, which leaves them zero).
    """
    x = np.asarray(audio)
    if x.ndim != 1 or not np.issubdtype(x.dtype, np.floating):
        raise ClipError(
            f"{video_id}: logfbank expects float mono audio [S] at {SAMPLE_RATE_HZ} Hz, "
            f"got {x.dtype} {x.shape}"
        )
    n_rows = x.shape[0] // SAMPLES_PER_FRAME
    if n_rows == 0:
        raise ClipError(
            f"{video_id}: audio of {x.shape[0]} samples is shorter than one 25 fps frame "
            f"({SAMPLES_PER_FRAME} samples)"
        )
    if not np.isfinite(x).all():
        raise ClipError(f"{video_id}: audio holds NaN or infinite samples")
    feats = stack_frames(logfbank(x * INT16_SCALE, SAMPLE_RATE_HZ), STACK)  # [ceil(F/4), 104]
    feats = layer_norm_rows(feats)  # [ceil(F/4), 104]
    if feats.shape[0] < n_rows:
        feats = np.concatenate([feats, np.zeros((n_rows - feats.shape[0], feats.shape[1]))])
    return feats[:n_rows].astype(np.float32)  # [S // 640, 104]


def mouth_pixel_rows(frames: np.ndarray, *, video_id: str = "") -> np.ndarray:
    """``[T, 96, 96]`` uint8 grey mouth ROIs -> ``[T, 484]`` float32 normalised pixels.

    Centre crop ``[4:92]`` on both axes (AV-HuBERT's ``CenterCrop(88)``), then the
    mean of each 4x4 block (area downsampling; 88 = 22 * 4 exactly), ``/ 255`` and
    ``(x - 0.421) / 0.165``.
    """
    x = np.asarray(frames)
    if x.ndim != 3 or x.shape[1:] != (MOUTH_ROI, MOUTH_ROI) or x.dtype != np.uint8:
        raise ClipError(
            f"{video_id}: mouth-pixels expects grey uint8 mouth crops [T, {MOUTH_ROI}, "
            f"{MOUTH_ROI}] (crop 'mouth'), got {x.dtype} {x.shape}"
        )
    if x.shape[0] == 0:
        raise ClipError(f"{video_id}: no frames to encode")
    off = (MOUTH_ROI - MOUTH_CROP) // 2
    crop = x[:, off : off + MOUTH_CROP, off : off + MOUTH_CROP]  # [T, 88, 88]
    side = MOUTH_CROP // POOL
    blocks = crop.reshape(-1, side, POOL, side, POOL).astype(np.float64)  # [T, 22, 4, 22, 4]
    pooled = blocks.mean(axis=(2, 4)) / 255.0  # [T, 22, 22]
    return ((pooled - MOUTH_MEAN) / MOUTH_STD).reshape(x.shape[0], -1).astype(np.float32)


class _WeightFreeEncoder(Encoder):
    """A numpy encoder with one layer, ``"last"``."""

    def __init__(self, spec: EncoderSpec, *, device: str, dtype: str) -> None:
        super().__init__(
            spec,
            layer_dims={LAST: spec.dim},
            checkpoint=None,
            checkpoint_sha256=None,
            random_init=False,
            device=device,
            compute_dtype=dtype,
        )

    @abstractmethod
    def _rows(self, clip: Clip) -> np.ndarray:
        """``[T, D]`` float32 rows of one clip; :class:`ClipError` when it cannot be encoded."""

    def encode(
        self, clips: Sequence[Clip], layers: Sequence[Layer]
    ) -> list[dict[Layer, np.ndarray]]:
        chosen = self.resolve_layers(layers)  # only "last" exists: EncoderError otherwise
        out = []
        for clip in clips:
            rows = self._rows(clip)  # [T, D] float32
            out.append({layer: rows for layer in chosen})
        return out


class LogFbankEncoder(_WeightFreeEncoder):
    """``logfbank``: layer-normalised stacked log filterbank rows, ``[S // 640, 104]``."""

    def _rows(self, clip: Clip) -> np.ndarray:
        if clip.audio is None:
            raise ClipError(f"{clip.video_id}: encoder {self.name} needs audio; the clip has none")
        return logfbank_rows(clip.audio, video_id=clip.video_id)


class MouthPixelsEncoder(_WeightFreeEncoder):
    """``mouth-pixels``: downsampled normalised mouth crops, ``[T, 484]``."""

    def _rows(self, clip: Clip) -> np.ndarray:
        if clip.frames is None:
            raise ClipError(
                f"{clip.video_id}: encoder {self.name} needs mouth crops; the clip has no frames"
            )
        return mouth_pixel_rows(clip.frames, video_id=clip.video_id)

    def spatial(self, layer: Layer) -> SpatialExplainer:
        """The exact decomposition into the 22x22 blocks (:mod:`featstore.encoders.mouth_spatial`)."""
        from featstore.encoders.mouth_spatial import MouthPixelsLinear

        self.resolve_layers([layer])  # only "last"
        return MouthPixelsLinear(self)


def _loader(cls: type[_WeightFreeEncoder]) -> Any:
    def load(
        spec: EncoderSpec,
        checkpoint: str | None,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        random_init: bool = False,
        **options: Any,
    ) -> _WeightFreeEncoder:
        if checkpoint is not None:
            raise CheckpointError(
                f"encoder {spec.name} has no weights and takes no checkpoint "
                f"(got {checkpoint!r}); drop --checkpoint"
            )
        if options:
            raise EncoderError(
                f"encoder {spec.name} takes no options, got {', '.join(sorted(options))}"
            )
        if random_init:
            log.info("%s has no weights: random_init changes nothing", spec.name)
        return cls(spec, device=device, dtype=dtype)

    return load


register(LOGFBANK, _loader(LogFbankEncoder))
register(MOUTH_PIXELS, _loader(MouthPixelsEncoder))
