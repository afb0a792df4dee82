"""Mouth-ROI geometry and the exact decomposition of ``mouth-pixels`` rows.

Every mouth encoder (``mouth-pixels``, AV-HuBERT, Auto-AVSR) sees the 88x88 centre
of the 96x96 grey mouth ROI that :func:`featstore.crops.crop_mouth` warps out of
the frame with a per-frame similarity transform (landmarks smoothed over the
whole video). :func:`mouth_inputs` crops the explained frames the same way and
returns the affine from the 88x88 model input back to the frame.

``mouth-pixels`` rows are the 22x22 block means themselves (normalised), so a
linear head decomposes exactly into one contribution per 4x4 block:
``c_i = w_i x_i / ||x||`` (:class:`MouthPixelsLinear`). AV-HuBERT and Auto-AVSR
aggregate non-linearly over space and time: Grad-CAM (:class:`MouthGradCam`).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from featstore.encoders.base import Clip
from featstore.layout import Layer
from featstore.spatial import geometry
from featstore.spatial.attribution import capture, decompose_weighted, grad_cam
from featstore.spatial.base import (
    GRADCAM,
    LINEAR,
    SpatialError,
    SpatialExplainer,
    SpatialMaps,
    VideoFrames,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from featstore.encoders.base import Encoder
    from featstore.spatial.head import FrameHead

__all__ = ["MouthGradCam", "MouthPixelsLinear", "mouth_inputs"]


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


class MouthGradCam(SpatialExplainer):
    """Grad-CAM on a mouth encoder's visual front end, for encoders whose rows mix frames.

    AV-HuBERT and Auto-AVSR run a transformer (conformer) over the whole clip, so
    a frame's row depends on every frame: explaining any frame runs the whole
    clip (:meth:`context`), with gradients. The hooked module is the 2-D ResNet
    trunk's last stage (``layer4``, a 3x3 grid on the 88x88 input); the map of
    frame ``t`` is Grad-CAM of ``z_t`` on frame ``t``'s own activations (the
    gradients of ``z_t`` reach other frames' activations too: those say where
    *other* frames matter, and are not used). Subclasses give the hooked module
    and the differentiable forward of one clip.
    """

    method = GRADCAM

    def __init__(self, encoder: Encoder, layer: Layer, *, module: nn.Module, target: str) -> None:
        super().__init__(encoder, layer, target=target, exact=False)
        self.module = module

    def context(self, frames: Sequence[int], n_frames: int) -> list[int]:
        self.check_frames(frames, n_frames)
        return list(range(n_frames))

    @abstractmethod
    def forward(self, clip: Clip) -> torch.Tensor:
        """The clip's rows ``[T, D]`` of ``self.layer``, with their graph (float32, no autocast)."""

    def explain(self, video: VideoFrames, frames: Sequence[int], head: FrameHead) -> SpatialMaps:
        import torch

        from featstore.crops import MOUTH_INPUT_SIZE

        if len(video.indices) != video.n_frames:
            raise SpatialError(f"{self.encoder.name} explanations need every frame of the clip")
        rois, to_frame = mouth_inputs(self.encoder, video, video.indices)
        clip = Clip(video_id="explained", frames=rois, audio=video.audio)
        frames = [int(f) for f in frames]
        cams, raws = [], []
        with torch.enable_grad(), capture(self.module) as box:
            rows = self.forward(clip)  # [T, D]
            if max(frames) >= rows.shape[0]:
                raise SpatialError(
                    f"frame {max(frames)} is past the {rows.shape[0]} rows {self.encoder.name} "
                    "gives for this clip"
                )
            z = head.logits(rows)  # [T]
            acts = box.output  # [T, C, h, w]
            for t in frames:
                (g,) = torch.autograd.grad(z[t], acts, retain_graph=True)
                a_t = acts[t].detach().flatten(1).T[None]  # [1, h * w, C]
                cam, raw = grad_cam(a_t, g[t].flatten(1).T[None])
                cams.append(cam[0].cpu().numpy())
                raws.append(raw[0].cpu().numpy())
        h, w = acts.shape[-2:]
        return self.maps(
            frames,
            logits=z.detach().cpu().numpy()[frames],
            maps=np.stack(cams).reshape(-1, h, w),
            peak_source=np.stack(raws).reshape(-1, h, w),
            to_frame=to_frame[frames],
            input_hw=(MOUTH_INPUT_SIZE, MOUTH_INPUT_SIZE),
            frame_hw=video.frame_hw,
        )
