"""Grad-CAM of CLIP features (paper Sec. 6.2, Fig. 4), in the full frame.

CLIP's frame feature (``last``: the projected CLS token after the post-LayerNorm;
layer ``i``: the CLS token of ``hidden_states[i]``) is a non-linear function of
the patch tokens, so its maps are Grad-CAM's. The paper applies Grad-CAM "to the
final LayerNorm layer of the CLIP visual encoder"; the post-LayerNorm sees only
the CLS token, so the hooked module is the last LayerNorm that sees every token:
``vision_model.encoder.layers[L - 1].layer_norm1`` of ``CLIPVisionModelWithProjection``
(the pre-attention LayerNorm of the last block, ``resblocks[-1].ln_1`` in OpenAI's
code), and ``layers[i - 1].layer_norm1`` for layer ``i``. Its patch tokens (the
CLS token dropped) go back on the ``224 / patch`` grid (16x16 for ViT-L/14).
Layer 0 is the CLS embedding alone: no map.

The grid is placed in the frame by undoing the processor's resize of the shorter
side and its centre crop (:func:`featstore.spatial.geometry.resize_crop_affine`):
the map covers the central square of a wide frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from featstore.layout import LAST, Layer
from featstore.spatial import geometry
from featstore.spatial.attribution import capture, grad_cam
from featstore.spatial.base import (
    GRADCAM,
    SpatialExplainer,
    SpatialMaps,
    SpatialUnsupportedError,
    VideoFrames,
)

if TYPE_CHECKING:
    from torch import nn

    from featstore.encoders.clip import ClipEncoder
    from featstore.encoders.hf import ImagePreprocess
    from featstore.spatial.head import FrameHead

__all__ = ["ClipGradCam", "preprocess_affine"]


def preprocess_affine(preprocess: ImagePreprocess, frame_hw: tuple[int, int]) -> np.ndarray:
    """Model input -> frame ``[2, 3]`` for an image processor's resize and centre crop."""
    h, w = frame_hw
    return geometry.resize_crop_affine(
        frame_hw, resized_hw=preprocess.resized_hw(h, w), crop_hw=preprocess.crop_hw
    )


class ClipGradCam(SpatialExplainer):
    """Grad-CAM on ``layers[i - 1].layer_norm1`` of CLIP's vision tower."""

    method = GRADCAM
    encoder: ClipEncoder

    def __init__(self, encoder: ClipEncoder, layer: Layer) -> None:
        n_layers = int(encoder.model.config.num_hidden_layers)
        if layer != LAST and int(layer) == 0:
            raise SpatialUnsupportedError(
                f"{encoder.name} layer 0 is the CLS embedding before any attention: no map"
            )
        self.block = n_layers - 1 if layer == LAST else int(layer) - 1
        super().__init__(
            encoder,
            layer,
            target=f"vision_model.encoder.layers[{self.block}].layer_norm1",
            exact=False,
        )

    @property
    def module(self) -> nn.Module:
        return self.encoder.model.vision_model.encoder.layers[self.block].layer_norm1

    def explain(self, video: VideoFrames, frames: Sequence[int], head: FrameHead) -> SpatialMaps:
        import torch

        enc = self.encoder
        cfg = enc.model.config
        side = int(cfg.image_size) // int(cfg.patch_size)
        images = video.take(frames)  # [N, H, W, 3]
        cams, raws, logits = [], [], []
        step = enc.frames_per_batch
        for start in range(0, len(images), step):
            pixels = enc.preprocess(images[start : start + step], threads=enc.preprocess_threads)
            x = torch.from_numpy(pixels).to(enc.device)  # [n, 3, 224, 224]
            with torch.enable_grad(), capture(self.module) as box:
                res = enc.model(pixel_values=x, output_hidden_states=self.layer != LAST)
                feat = (
                    res.image_embeds if self.layer == LAST else res.hidden_states[self.layer][:, 0]
                )
                z = head.logits(feat)  # [n]
                (grads,) = torch.autograd.grad(z.sum(), box.output)  # frames are independent
            cam, raw = grad_cam(box.output[:, 1:].detach(), grads[:, 1:])  # [n, side * side]
            cams.append(cam.cpu().numpy().reshape(-1, side, side))
            raws.append(raw.cpu().numpy().reshape(-1, side, side))
            logits.append(z.detach().cpu().numpy())
        size = (int(cfg.image_size), int(cfg.image_size))
        to_frame = np.broadcast_to(
            preprocess_affine(enc.preprocess, video.frame_hw), (len(images), 2, 3)
        )
        return self.maps(
            frames,
            logits=np.concatenate(logits),
            maps=np.concatenate(cams),
            peak_source=np.concatenate(raws),
            to_frame=to_frame,
            input_hw=size,
            frame_hw=video.frame_hw,
        )
