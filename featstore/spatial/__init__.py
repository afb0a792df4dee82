"""Spatial explanations of a per-frame linear head on a visual encoder (paper Sec. 3.1, Fig. 4).

The store keeps pooled per-frame rows, so a spatial map needs the encoder re-run
on the frames being explained. Each visual encoder family returns a
:class:`~featstore.spatial.base.SpatialExplainer` from ``Encoder.spatial(layer)``:

| encoder | layer | method | what |
|---|---|---|---|
| ``fsfm`` (``pooling="mean"``) | all | linear, exact | mean of patch tokens; ``last`` of the fine-tuned checkpoint is ``fc_norm(mean)``: exact with a per-frame constant from ``fc_norm``'s bias |
| ``fsfm`` (``pooling="cls"``) | ``1..L``, ``last`` | Grad-CAM | ``blocks[i-1].norm1`` (the LayerNorm that sees every token) |
| ``videomae`` | all | linear, exact | mean of a tubelet step's patch tokens |
| ``mouth-pixels`` | ``last`` | linear, exact | each 4x4 block of the 88x88 mouth input |
| ``clip`` | ``1..L``, ``last`` | Grad-CAM | ``vision_model.encoder.layers[i-1].layer_norm1`` (``last``: the last block's) |
| ``avhubert-v``, ``avhubert-av`` | all | Grad-CAM | ``feature_extractor_video.resnet.trunk.layer4`` (3x3 on the 88x88 mouth input) |
| ``autoavsr-vsr``, ``autoavsr-avsr`` | all | Grad-CAM | the video front end's ``trunk.layer4`` (3x3) |

The maths is in :mod:`~featstore.spatial.attribution`, the frame geometry in
:mod:`~featstore.spatial.geometry` (maps are placed in the original frame by
undoing each encoder's crop and resize), the head in
:mod:`~featstore.spatial.head`. Explanations run in float32 without autocast
(so the linear decomposition sums to the logit); the frame logit they report is
the one of the float32 forward, which differs from the stored row's logit by the
store's float16 rounding.
"""

from __future__ import annotations

from featstore.spatial.base import (
    GRADCAM,
    LINEAR,
    SpatialError,
    SpatialExplainer,
    SpatialMaps,
    SpatialUnsupportedError,
    VideoFrames,
)
from featstore.spatial.head import FrameHead, HeadError

__all__ = [
    "GRADCAM",
    "LINEAR",
    "FrameHead",
    "HeadError",
    "SpatialError",
    "SpatialExplainer",
    "SpatialMaps",
    "SpatialUnsupportedError",
    "VideoFrames",
]
