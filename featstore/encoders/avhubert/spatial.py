"""Grad-CAM of AV-HuBERT's visual features (``avhubert-v``, ``avhubert-av``) on the mouth ROI.

The hooked module is ``feature_extractor_video.resnet.trunk.layer4``, the last
stage of the per-frame ResNet-18 (a 3x3 grid on the 88x88 mouth input); the
rows are the clip's hidden states as :meth:`AVHubertEncoder.encode` computes
them (the audio of ``-av`` enters unchanged). See
:class:`featstore.encoders.mouth_spatial.MouthGradCam`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from featstore.encoders.base import Clip
from featstore.encoders.mouth_spatial import MouthGradCam
from featstore.layout import Layer
from featstore.spatial.base import SpatialUnsupportedError

if TYPE_CHECKING:
    from featstore.encoders.avhubert.encoder import AVHubertEncoder

__all__ = ["AVHubertGradCam"]

TARGET = "feature_extractor_video.resnet.trunk.layer4"


class AVHubertGradCam(MouthGradCam):
    """Grad-CAM of an AV-HuBERT layer on the video front end's last ResNet stage."""

    encoder: AVHubertEncoder

    def __init__(self, encoder: AVHubertEncoder, layer: Layer) -> None:
        if not encoder.spec.needs_video:
            raise SpatialUnsupportedError(f"{encoder.name} sees no video: no spatial map")
        module = encoder.model.feature_extractor_video.resnet.trunk.layer4
        super().__init__(encoder, layer, module=module, target=TARGET)

    def forward(self, clip: Clip) -> torch.Tensor:
        enc = self.encoder
        audio, video = enc._inputs(clip)
        a = None if audio is None else torch.from_numpy(audio).to(enc.device)[None]  # [1, T, 104]
        v = torch.from_numpy(video).to(enc.device)[None, None]  # [1, 1, T, 88, 88]
        return enc.model(a, v, pad=None, layers=[self.layer])[self.layer][0]  # [T, D]
