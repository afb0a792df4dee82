"""Grad-CAM of Auto-AVSR's visual features (``autoavsr-vsr``, ``autoavsr-avsr``) on the mouth ROI.

The hooked module is the video front end's ``trunk.layer4`` (``frontend.trunk.layer4``
of the visual model, ``video.frontend.trunk.layer4`` of the audio-visual one):
the last stage of the per-frame ResNet-18, a 3x3 grid on the 88x88 mouth input.
The rows are computed as :meth:`AutoAVSREncoder.encode` does (the audio branch of
``-avsr`` enters unchanged). See :class:`featstore.encoders.mouth_spatial.MouthGradCam`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from featstore.encoders.autoavsr.model import AudioVisualModel
from featstore.encoders.base import Clip
from featstore.encoders.mouth_spatial import MouthGradCam
from featstore.layout import LAST, Layer
from featstore.spatial.base import SpatialUnsupportedError

if TYPE_CHECKING:
    from featstore.encoders.autoavsr.encoder import AutoAVSREncoder

__all__ = ["AutoAVSRGradCam"]


class AutoAVSRGradCam(MouthGradCam):
    """Grad-CAM of an Auto-AVSR layer on the video front end's last ResNet stage."""

    encoder: AutoAVSREncoder

    def __init__(self, encoder: AutoAVSREncoder, layer: Layer) -> None:
        model = encoder.model
        if isinstance(model, AudioVisualModel):
            module, target = model.video.frontend.trunk.layer4, "video.frontend.trunk.layer4"
        elif encoder.config.modality == "visual":
            module, target = model.frontend.trunk.layer4, "frontend.trunk.layer4"
        else:
            raise SpatialUnsupportedError(f"{encoder.name} sees no video: no spatial map")
        super().__init__(encoder, layer, module=module, target=target)

    def forward(self, clip: Clip) -> torch.Tensor:
        enc = self.encoder
        video = enc._video(clip)  # [T, 88, 88]
        n = video.shape[0]
        audios = [enc._audio(clip, n)] if enc.config.modality == "audiovisual" else []
        mask = torch.ones(1, n, dtype=torch.bool, device=enc.device)
        upto = enc.config.n_blocks if self.layer == LAST else int(self.layer)
        return enc._forward([video], audios, mask, upto, [self.layer])[self.layer][0]  # [T, D]
