"""Spatial explanations of FSFM features (:mod:`featstore.spatial`), in the full frame.

- ``pooling="mean"`` (the default, the paper's): every layer's row is the mean of
  the patch tokens, so the head decomposes exactly into patch contributions
  (:func:`~featstore.spatial.attribution.decompose_mean`). ``last`` of the
  fine-tuned checkpoint is ``fc_norm(mean)``: the LayerNorm after the mean is
  handled exactly (its centring is linear, its scale one number per frame) and
  its bias leaves a per-frame constant that belongs to no patch; ``last`` of the
  pre-trained checkpoint is the mean of ``norm(token)``, linear in the normed
  tokens.
- ``pooling="cls"``: Grad-CAM on ``blocks[i - 1].norm1`` for layer ``i`` (the last
  block's for ``last``), the LayerNorm that sees every token; layer 0 (the CLS
  embedding alone) has no map.

Maps are on the 14x14 patch grid (``img_size / patch``) of the 224x224 face crop,
placed in the frame through the crop's box (:func:`featstore.crops.face_boxes`):
the same box the extraction cropped with, from the video's face tracks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from featstore.layout import LAST, Layer
from featstore.spatial import geometry
from featstore.spatial.attribution import capture, decompose_mean, grad_cam
from featstore.spatial.base import (
    GRADCAM,
    LINEAR,
    SpatialError,
    SpatialExplainer,
    SpatialMaps,
    SpatialUnsupportedError,
    VideoFrames,
)

if TYPE_CHECKING:
    import torch

    from featstore.encoders.fsfm import FSFMEncoder
    from featstore.spatial.head import FrameHead

__all__ = ["FSFMGradCam", "FSFMLinear", "explainer"]


def explainer(encoder: FSFMEncoder, layer: Layer) -> SpatialExplainer:
    """The linear decomposition for mean pooling, Grad-CAM for the CLS token."""
    if encoder.pooling == "mean":
        return FSFMLinear(encoder, layer)
    return FSFMGradCam(encoder, layer)


class _FSFMExplainer(SpatialExplainer):
    encoder: FSFMEncoder

    @property
    def grid_side(self) -> int:
        return self.encoder.config.img_size // self.encoder.config.patch_size

    def _inputs(self, video: VideoFrames, frames: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(face crops ``uint8 [N, 224, 224, 3]``, model input -> frame ``[N, 2, 3]``)."""
        from featstore.crops import FACE_SIZE, crop_face, face_boxes

        if video.tracks is None:
            raise SpatialError(f"{self.encoder.name} needs the video's face tracks to crop faces")
        idx = np.asarray(frames, dtype=np.int64)
        faces = crop_face(video.take(idx), video.tracks, indices=idx)  # [N, 224, 224, 3]
        boxes = face_boxes(video.tracks)[idx]  # [N, 4]
        size = self.encoder.config.img_size
        to_crop = geometry.scale_affine(FACE_SIZE / size, FACE_SIZE / size)  # input -> crop
        to_frame = np.stack(
            [geometry.compose(geometry.square_box_affine(b, FACE_SIZE), to_crop) for b in boxes]
        )
        return faces, to_frame

    def _batches(self, n: int) -> list[slice]:
        step = self.encoder.frames_per_batch
        return [slice(i, min(n, i + step)) for i in range(0, n, step)]

    def _pixels(self, faces: np.ndarray) -> torch.Tensor:
        from featstore.encoders.fsfm import face_pixels

        return face_pixels(faces, self.encoder.config.img_size, self.encoder.device)


class FSFMLinear(_FSFMExplainer):
    """Exact patch contributions of a mean-pooled FSFM row."""

    method = LINEAR

    def __init__(self, encoder: FSFMEncoder, layer: Layer) -> None:
        cfg = encoder.config
        if layer == LAST and cfg.final_norm == "fc_norm":
            target = "fc_norm(mean of the last block's patch tokens): exact, fc_norm bias apart"
        elif layer == LAST:
            target = "mean of norm(patch token) after the last block"
        else:
            target = f"mean of the patch tokens after block {int(layer)}"
        super().__init__(encoder, layer, target=target, exact=True)

    def explain(self, video: VideoFrames, frames: Sequence[int], head: FrameHead) -> SpatialMaps:
        import torch

        enc, cfg = self.encoder, self.encoder.config
        faces, to_frame = self._inputs(video, frames)
        upto = cfg.depth if self.layer == LAST else int(self.layer)
        g = self.grid_side
        parts, consts, logits = [], [], []
        from featstore.encoders.fsfm import vit_hidden_states

        with torch.no_grad():
            for s in self._batches(len(faces)):
                states = vit_hidden_states(enc.model, cfg, self._pixels(faces[s]), upto=upto)
                norm = None
                if self.layer != LAST:
                    tokens = states[int(self.layer)][:, 1:]
                elif cfg.final_norm == "norm":
                    tokens = enc.model.norm(states[-1])[:, 1:]
                else:
                    tokens, norm = states[-1][:, 1:], enc.model.fc_norm
                d = decompose_mean(tokens, head, norm=norm)  # [n, P]
                parts.append(d.contributions.cpu().numpy().reshape(-1, g, g))
                consts.append(d.constant.cpu().numpy())
                logits.append(d.logits.cpu().numpy())
        maps = np.concatenate(parts)
        return self.maps(
            frames,
            logits=np.concatenate(logits),
            maps=maps,
            peak_source=maps,
            to_frame=to_frame,
            input_hw=(cfg.img_size, cfg.img_size),
            frame_hw=video.frame_hw,
            constant=np.concatenate(consts),
        )


class FSFMGradCam(_FSFMExplainer):
    """Grad-CAM of a CLS-pooled FSFM row on the LayerNorm before the last attention."""

    method = GRADCAM

    def __init__(self, encoder: FSFMEncoder, layer: Layer) -> None:
        depth = encoder.config.depth
        if layer != LAST and int(layer) == 0:
            raise SpatialUnsupportedError(
                f"{encoder.name} layer 0 with pooling 'cls' is the CLS embedding alone: no map"
            )
        self.block = depth - 1 if layer == LAST else int(layer) - 1
        super().__init__(encoder, layer, target=f"blocks[{self.block}].norm1", exact=False)

    def explain(self, video: VideoFrames, frames: Sequence[int], head: FrameHead) -> SpatialMaps:
        import torch

        from featstore.encoders.fsfm import vit_hidden_states

        enc, cfg = self.encoder, self.encoder.config
        faces, to_frame = self._inputs(video, frames)
        upto = cfg.depth if self.layer == LAST else int(self.layer)
        g = self.grid_side
        cams, raws, logits = [], [], []
        module = enc.model.blocks[self.block].norm1
        for s in self._batches(len(faces)):
            with torch.enable_grad(), capture(module) as box:
                states = vit_hidden_states(enc.model, cfg, self._pixels(faces[s]), upto=upto)
                z = head.logits(enc._rows(states, self.layer))  # [n]
                (grads,) = torch.autograd.grad(z.sum(), box.output)  # frames are independent
            cam, raw = grad_cam(box.output[:, 1:].detach(), grads[:, 1:])  # [n, P]
            cams.append(cam.cpu().numpy().reshape(-1, g, g))
            raws.append(raw.cpu().numpy().reshape(-1, g, g))
            logits.append(z.detach().cpu().numpy())
        return self.maps(
            frames,
            logits=np.concatenate(logits),
            maps=np.concatenate(cams),
            peak_source=np.concatenate(raws),
            to_frame=to_frame,
            input_hw=(cfg.img_size, cfg.img_size),
            frame_hw=video.frame_hw,
        )
