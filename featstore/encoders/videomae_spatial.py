"""Spatial explanations of VideoMAE features: the exact decomposition of a tubelet step's mean.

Row ``r`` of a 16-frame window is the mean of the patch tokens of tubelet time
step ``r`` (frames ``2r, 2r + 1``), of ``last_hidden_state`` (which carries the
encoder's final per-token LayerNorm in pre-trained checkpoints) or of
``hidden_states[i]``; a linear head on it decomposes exactly into the ``14 x 14``
patches of that step. Explaining a frame runs its whole window (the window is
what the row depends on); the map is the same for both frames of a step. Frames
past the last whole window have no row. The grid is placed in the frame by
undoing the processor's resize and centre crop, as for CLIP.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from featstore.encoders.clip_spatial import preprocess_affine
from featstore.layout import LAST, Layer
from featstore.spatial.attribution import decompose_mean
from featstore.spatial.base import LINEAR, SpatialExplainer, SpatialMaps, VideoFrames

if TYPE_CHECKING:
    from featstore.encoders.videomae import VideoMAEEncoder
    from featstore.spatial.head import FrameHead

__all__ = ["VideoMAELinear"]


class VideoMAELinear(SpatialExplainer):
    """Exact patch contributions of a VideoMAE tubelet-step row."""

    method = LINEAR
    encoder: VideoMAEEncoder

    def __init__(self, encoder: VideoMAEEncoder, layer: Layer) -> None:
        what = "last_hidden_state" if layer == LAST else f"hidden_states[{int(layer)}]"
        super().__init__(
            encoder, layer, target=f"mean of a tubelet step's patch tokens of {what}", exact=True
        )

    def last_frame(self, n_frames: int) -> int:
        return (n_frames // self.encoder.window) * self.encoder.window

    def context(self, frames: Sequence[int], n_frames: int) -> list[int]:
        self.check_frames(frames, n_frames)
        w = self.encoder.window
        windows = sorted({int(f) // w for f in frames})
        return [k for i in windows for k in range(i * w, (i + 1) * w)]

    def explain(self, video: VideoFrames, frames: Sequence[int], head: FrameHead) -> SpatialMaps:
        import torch

        enc = self.encoder
        cfg = enc.model.config
        w, steps = enc.window, enc.steps
        side = int(cfg.image_size) // int(cfg.patch_size)
        frames = [int(f) for f in frames]
        windows = sorted({f // w for f in frames})
        step_maps: dict[tuple[int, int], tuple[np.ndarray, float]] = {}  # (window, step)
        for start in range(0, len(windows), enc.windows_per_batch):
            batch = windows[start : start + enc.windows_per_batch]
            images = video.take([k for i in batch for k in range(i * w, (i + 1) * w)])
            pixels = enc.preprocess(images, threads=enc.preprocess_threads)  # [n * 16, 3, S, S]
            x = torch.from_numpy(pixels).to(enc.device).view(len(batch), w, *pixels.shape[1:])
            with torch.no_grad():
                res = enc.model(pixel_values=x, output_hidden_states=self.layer != LAST)
                tokens = (
                    res.last_hidden_state if self.layer == LAST else res.hidden_states[self.layer]
                )
                n, length, dim = tokens.shape
                per_step = tokens.float().reshape(n * steps, length // steps, dim)  # [n*8, P, D]
                d = decompose_mean(per_step, head)
            parts = d.contributions.cpu().numpy().reshape(n, steps, side, side)
            logits = d.logits.cpu().numpy().reshape(n, steps)
            for j, i in enumerate(batch):
                for r in range(steps):
                    step_maps[(i, r)] = (parts[j, r], float(logits[j, r]))
        tubelet = w // steps
        keys = [(f // w, (f % w) // tubelet) for f in frames]
        maps = np.stack([step_maps[k][0] for k in keys])
        to_frame = np.broadcast_to(
            preprocess_affine(enc.preprocess, video.frame_hw), (len(frames), 2, 3)
        )
        return self.maps(
            frames,
            logits=np.array([step_maps[k][1] for k in keys]),
            maps=maps,
            peak_source=maps,
            to_frame=to_frame,
            input_hw=(int(cfg.image_size), int(cfg.image_size)),
            frame_hw=video.frame_hw,
            constant=np.zeros(len(frames)),
        )
