"""Mouth-ROI geometry and the exact decomposition of ``mouth-pixels`` rows.

Every mouth encoder (``mouth-pixels``, AV-HuBERT, Auto-AVSR) sees the 88x88 centre
of the 96x96 grey mouth ROI that :func:`featstore.crops.crop_mouth` warps out of
the frame with a per-frame similarity transform (landmarks smoothed over the
whole video). :func:`mouth_inputs` crops the explained frames the same way and
returns the affine from the 88x88 model input back to the frame.

``mouth-pixels`` rows are the 22x22 block means themselves (normalised), so a
linear head decomposes exactly into one contribution per 4x4 block:
``c_i = w_i x_i / ||x||``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from featstore.spatial import geometry
from featstore.spatial.attribution import decompose_weighted
from featstore.spatial.base import LINEAR, SpatialError, SpatialExplainer, SpatialMaps, VideoFrames

if TYPE_CHECKING:
    from featstore.encoders.base import Encoder
    from featstore.spatial.head import FrameHead

__all__ = ["MouthPixelsLinear", "mouth_inputs"]


def mouth_inputs(
    encoder: Encoder, video: VideoFrames, frames: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """(mouth ROIs ``uint8 [N, 96, 96]``, 88x88 model input -> frame ``[N, 2, 3]``)."""
    from featstore.crops import MOUTH_INPUT_SIZE, MOUTH_SIZE, crop_mouth, mouth_transforms

    if video.tracks is None:
        raise SpatialError(f"{encoder.name} needs the video's face tracks to crop mouths")
    idx = np.asarray(frames, dtype=np.int64)
    rois = crop_mouth(video.take(idx), video.tracks, indices=idx)  # [N, 96, 96]
    mats = mouth_transforms(video.tracks.landmarks)[idx]  # [N, 2, 3] frame -> ROI
    offset = (MOUTH_SIZE - MOUTH_INPUT_SIZE) / 2
    return rois, np.stack([geometry.mouth_affine(m, offset=offset) for m in mats])


class MouthPixelsLinear(SpatialExplainer):
    """Exact contributions of the 22x22 blocks of a ``mouth-pixels`` row."""

    method = LINEAR

    def __init__(self, encoder: Encoder) -> None:
        from featstore.layout import LAST

        super().__init__(
            encoder, LAST, target="the 22x22 block means of the 88x88 mouth input", exact=True
        )

    def explain(self, video: VideoFrames, frames: Sequence[int], head: FrameHead) -> SpatialMaps:
        import torch

        from featstore.crops import MOUTH_INPUT_SIZE
        from featstore.encoders.baselines import mouth_pixel_rows

        rois, to_frame = mouth_inputs(self.encoder, video, frames)
        rows = mouth_pixel_rows(rois)  # [N, 484]
        side = round(rows.shape[1] ** 0.5)
        d = decompose_weighted(torch.from_numpy(rows), head)
        maps = d.contributions.numpy().reshape(-1, side, side)
        return self.maps(
            frames,
            logits=d.logits.numpy(),
            maps=maps,
            peak_source=maps,
            to_frame=to_frame,
            input_hw=(MOUTH_INPUT_SIZE, MOUTH_INPUT_SIZE),
            frame_hw=video.frame_hw,
            constant=d.constant.numpy(),
        )
