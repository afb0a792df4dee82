"""The spatial explainer interface and what it returns.

An encoder family that supports spatial explanations returns a
:class:`SpatialExplainer` from ``Encoder.spatial(layer)``. The explainer says
which 25 fps frames it must see to explain some frames (:meth:`context`: the
frames themselves for per-frame encoders, the 16-frame window for VideoMAE, the
whole clip for AV-HuBERT / Auto-AVSR, whose rows depend on every frame), and
:meth:`explain` turns those decoded frames (plus the face tracks for crop
encoders, and the audio for audio-visual ones) and a :class:`FrameHead` into
:class:`SpatialMaps`: one map per explained frame on the model's patch grid,
with the affine that places the grid in the original frame.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from featstore import timebase
from featstore.errors import FeatstoreError
from featstore.layout import Layer, layer_key
from featstore.spatial import geometry

if TYPE_CHECKING:
    from featstore.encoders.base import Encoder
    from featstore.landmarks import FaceTracks
    from featstore.spatial.head import FrameHead

__all__ = [
    "GRADCAM",
    "LINEAR",
    "SpatialError",
    "SpatialExplainer",
    "SpatialMaps",
    "SpatialUnsupportedError",
    "VideoFrames",
]

LINEAR, GRADCAM = "linear", "gradcam"


class SpatialError(FeatstoreError):
    """A spatial explanation cannot be computed as asked."""


class SpatialUnsupportedError(SpatialError):
    """The encoder (or this layer of it) has no spatial explanation."""


@dataclass(frozen=True, eq=False)
class VideoFrames:
    """The decoded frames of one video that an explainer asked for (:meth:`SpatialExplainer.context`)."""

    indices: np.ndarray  # [M] 25 fps frame indices, sorted, unique
    frames: np.ndarray = field(repr=False)  # [M, H, W, 3] uint8 RGB, full frames
    n_frames: int  # the whole video's length in 25 fps frames
    tracks: FaceTracks | None = field(default=None, repr=False)  # the whole video's
    audio: np.ndarray | None = field(default=None, repr=False)  # [S] the whole clip, 16 kHz

    def __post_init__(self) -> None:
        idx = np.asarray(self.indices, dtype=np.int64)
        if len(idx) != len(self.frames):
            raise SpatialError(f"{len(idx)} frame indices for {len(self.frames)} frames")
        if len(idx) and (np.any(np.diff(idx) <= 0) or idx[0] < 0 or idx[-1] >= self.n_frames):
            raise SpatialError("frame indices must be sorted, unique and inside the video")
        object.__setattr__(self, "indices", idx)

    @property
    def frame_hw(self) -> tuple[int, int]:
        return int(self.frames.shape[1]), int(self.frames.shape[2])

    def take(self, wanted: Sequence[int]) -> np.ndarray:
        """``[len(wanted), H, W, 3]`` frames at these video indices (all must be decoded)."""
        pos = np.searchsorted(self.indices, np.asarray(wanted, dtype=np.int64))
        if np.any(pos >= len(self.indices)) or np.any(
            self.indices[np.minimum(pos, len(self.indices) - 1)] != wanted
        ):
            raise SpatialError("an explained frame was not decoded")
        return self.frames[pos]


@dataclass(frozen=True, eq=False)
class SpatialMaps:
    """Per-frame patch maps of one video, placed in its frames.

    ``maps[i]`` is on the model's ``grid_hw`` patch grid (row 0 at the top); for the
    linear decomposition it holds the contributions (``maps[i].sum() + constant[i]
    + bias == logits[i]``), for Grad-CAM the ReLU'd map. ``to_frame[i]`` maps model
    input edge coordinates to frame edge coordinates (:mod:`featstore.spatial.geometry`).
    """

    encoder: str
    layer: Layer
    method: str  # LINEAR | GRADCAM
    target: str  # what was decomposed or which module Grad-CAM hooked
    exact: bool  # the contributions sum to the frame logit
    frames: np.ndarray  # [N] 25 fps frame indices
    rows: np.ndarray  # [N] the encoder row each frame belongs to
    logits: np.ndarray  # [N] frame logits recomputed from the media (float32 forward)
    maps: np.ndarray = field(repr=False)  # [N, h, w] float32
    peak_cells: np.ndarray = field(repr=False)  # [N, 2] (row, col) of each map's maximum
    to_frame: np.ndarray = field(repr=False)  # [N, 2, 3] model input -> frame
    input_hw: tuple[int, int] = (0, 0)
    frame_hw: tuple[int, int] = (0, 0)
    constant: np.ndarray | None = field(default=None, repr=False)  # [N] linear only

    @property
    def grid_hw(self) -> tuple[int, int]:
        return int(self.maps.shape[1]), int(self.maps.shape[2])

    @property
    def peaks(self) -> np.ndarray:
        """``[N, 2]`` (x, y) of each map's maximum, relative to the frame (``x / W``, ``y / H``)."""
        return geometry.peaks_relative(
            self.peak_cells,
            self.to_frame,
            grid_hw=self.grid_hw,
            input_hw=self.input_hw,
            frame_hw=self.frame_hw,
        )

    def frame_maps(self, out_hw: tuple[int, int] | None = None) -> np.ndarray:
        """``[N, H', W']`` maps drawn over the frames (NaN where the model saw nothing)."""
        return np.stack(
            [
                geometry.frame_map(
                    m, a, input_hw=self.input_hw, frame_hw=self.frame_hw, out_hw=out_hw
                )
                for m, a in zip(self.maps, self.to_frame, strict=True)
            ]
        )

    def select(self, keep: Sequence[int]) -> SpatialMaps:
        """The maps of positions ``keep`` only."""
        import dataclasses

        k = np.asarray(keep, dtype=np.int64)
        return dataclasses.replace(
            self,
            frames=self.frames[k],
            rows=self.rows[k],
            logits=self.logits[k],
            maps=self.maps[k],
            peak_cells=self.peak_cells[k],
            to_frame=self.to_frame[k],
            constant=None if self.constant is None else self.constant[k],
        )

    def summary(self) -> dict[str, Any]:
        """JSON-ready description (no maps)."""
        return {
            "encoder": self.encoder,
            "layer": layer_key(self.layer),
            "method": self.method,
            "target": self.target,
            "exact": self.exact,
            "grid_hw": list(self.grid_hw),
            "input_hw": list(self.input_hw),
            "frame_hw": list(self.frame_hw),
        }


class SpatialExplainer(ABC):
    """Spatial maps of one encoder layer for a per-frame linear head."""

    method: ClassVar[str]

    def __init__(self, encoder: Encoder, layer: Layer, *, target: str, exact: bool) -> None:
        self.encoder = encoder
        self.layer = layer
        self.target = target
        self.exact = exact

    @property
    def needs_tracks(self) -> bool:
        """Whether :meth:`explain` needs the video's face tracks (face or mouth crops)."""
        return self.encoder.spec.crop != "none"

    @property
    def needs_audio(self) -> bool:
        return self.encoder.spec.needs_audio

    def rows(self, frames: Sequence[int]) -> np.ndarray:
        """The encoder row each 25 fps frame belongs to."""
        hz = self.encoder.spec.frame_hz / timebase.FRAME_HZ
        return (np.asarray(frames, dtype=np.int64) * hz).astype(np.int64)

    def context(self, frames: Sequence[int], n_frames: int) -> list[int]:
        """The 25 fps frames to decode to explain ``frames`` (default: just those)."""
        self.check_frames(frames, n_frames)
        return sorted({int(f) for f in frames})

    def check_frames(self, frames: Sequence[int], n_frames: int) -> None:
        if len(frames) == 0:
            raise SpatialError("no frames to explain")
        bad = [int(f) for f in frames if not 0 <= int(f) < self.last_frame(n_frames)]
        if bad:
            raise SpatialError(
                f"frame {bad[0]} is outside the {self.last_frame(n_frames)} frames of the video "
                f"that {self.encoder.name} gives rows for"
            )

    def last_frame(self, n_frames: int) -> int:
        """Frames ``[0, last_frame)`` have a row (e.g. VideoMAE drops a last short window)."""
        return int(n_frames)

    @abstractmethod
    def explain(self, video: VideoFrames, frames: Sequence[int], head: FrameHead) -> SpatialMaps:
        """Maps of ``frames`` (25 fps indices, in this order) from the decoded ``video``."""

    def maps(
        self,
        frames: Sequence[int],
        *,
        logits: np.ndarray,
        maps: np.ndarray,
        peak_source: np.ndarray,
        to_frame: np.ndarray,
        input_hw: tuple[int, int],
        frame_hw: tuple[int, int],
        constant: np.ndarray | None = None,
    ) -> SpatialMaps:
        """A :class:`SpatialMaps` of this explainer (``peak_source [N, h, w]``: where peaks are read)."""
        f = np.asarray(frames, dtype=np.int64)
        return SpatialMaps(
            encoder=self.encoder.name,
            layer=self.layer,
            method=self.method,
            target=self.target,
            exact=self.exact,
            frames=f,
            rows=self.rows(f),
            logits=np.asarray(logits, dtype=np.float64),
            maps=np.asarray(maps, dtype=np.float32),
            peak_cells=geometry.peak_cells(np.asarray(peak_source, dtype=np.float64)),
            to_frame=np.asarray(to_frame, dtype=np.float64).reshape(len(f), 2, 3),
            input_hw=(int(input_hw[0]), int(input_hw[1])),
            frame_hw=(int(frame_hw[0]), int(frame_hw[1])),
            constant=None if constant is None else np.asarray(constant, dtype=np.float64),
        )
