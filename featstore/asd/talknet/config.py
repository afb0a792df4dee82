"""TalkNet-ASD's architecture as a frozen config: the published model and a tiny test variant.

The original code (``TaoRuijie/TalkNet-ASD``, PEERS.md) hard-codes every width; the
config names them so that a tiny random model with the same layout and key names can
exercise the loader and the pipeline in tests. :func:`config_from_state_dict` reads the
widths back from a checkpoint's tensor shapes, so a checkpoint says what it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["FULL", "TINY", "TalkNetConfig", "config_from_state_dict"]


@dataclass(frozen=True)
class TalkNetConfig:
    """Widths of TalkNet's streams (defaults: ``pretrain_TalkSet.model``, 15.0 M parameters).

    - visual front end: Conv3d(1 -> ``frontend_channels``, k 5x7x7) + BN + ReLU + max pool,
      a ResNet-18 trunk of ``resnet_planes`` (2 blocks per stage) and a 4x4 average pool
      (the 112x112 crop comes out 4x4), so one ``resnet_planes[-1]`` vector per frame;
    - visual temporal network: ``tcn_blocks`` depthwise-separable residual Conv1d blocks,
      then Conv1d(k 5) to ``visual_hidden`` + BN + ReLU + Conv1d(1x1) to ``embed_dim``;
    - audio encoder: Conv2d(1 -> ``audio_filters[0]``, k 7, stride (2, 1)) + BN + ReLU and
      four stages of SE basic blocks (``audio_layers`` blocks, ``audio_filters`` wide, SE
      reduction 8), the frequency axis averaged away: one ``embed_dim`` vector per 4 MFCC rows;
    - cross attention A->V and V->A (``embed_dim``, ``heads``), self attention over the
      concatenation (``2 * embed_dim``), and the audio-visual head Linear(2 * embed_dim, 2).
    """

    frontend_channels: int = 64
    resnet_planes: tuple[int, int, int, int] = (64, 128, 256, 512)
    tcn_blocks: int = 5
    visual_hidden: int = 256
    audio_layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    audio_filters: tuple[int, int, int, int] = (16, 32, 64, 128)
    heads: int = 8
    se_reduction: int = 8

    def __post_init__(self) -> None:
        if self.resnet_planes[0] != self.frontend_channels:
            raise ValueError("the ResNet's first stage keeps the front end's channels")
        if self.embed_dim % self.heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by {self.heads} heads")
        if min(self.audio_filters) < self.se_reduction:
            raise ValueError("every audio stage must be at least se_reduction channels wide")

    @property
    def embed_dim(self) -> int:
        """Width of each stream after its encoder (128): the audio encoder's last stage."""
        return self.audio_filters[-1]

    @property
    def visual_dim(self) -> int:
        return self.resnet_planes[-1]


FULL = TalkNetConfig()
TINY = TalkNetConfig(
    frontend_channels=8,
    resnet_planes=(8, 8, 16, 16),
    tcn_blocks=2,
    visual_hidden=16,
    audio_layers=(1, 1, 1, 1),
    audio_filters=(4, 4, 8, 16),
    se_reduction=2,
)


def config_from_state_dict(state: Mapping[str, Any]) -> TalkNetConfig:
    """The config whose shapes a (renamed, see ``weights``) state dict has.

    Reads widths from the weights that fix them and counts blocks by key; a state dict
    missing one of those keys raises ``KeyError`` (the loader turns it into a clear error).
    """

    def count(prefix: str) -> int:
        idx = {k[len(prefix) :].split(".")[0] for k in state if k.startswith(prefix)}
        return len({int(i) for i in idx if i.isdigit()})

    planes = tuple(
        int(state[f"visual_frontend.resnet.layer{i}.conv1a.weight"].shape[0]) for i in (1, 2, 3, 4)
    )
    filters = tuple(
        int(state[f"audio_encoder.layer{i}.0.conv1.weight"].shape[0]) for i in (1, 2, 3, 4)
    )
    layers = tuple(count(f"audio_encoder.layer{i}.") for i in (1, 2, 3, 4))
    se_hidden = int(state["audio_encoder.layer1.0.se.fc.0.weight"].shape[0])
    return TalkNetConfig(
        frontend_channels=int(state["visual_frontend.frontend3d.0.weight"].shape[0]),
        resnet_planes=planes,  # type: ignore[arg-type]
        tcn_blocks=count("visual_tcn.net."),
        visual_hidden=int(state["visual_conv1d.net.0.weight"].shape[0]),
        audio_layers=layers,  # type: ignore[arg-type]
        audio_filters=filters,  # type: ignore[arg-type]
        heads=FULL.heads,  # not in the weights' shapes; TalkNet always uses 8
        se_reduction=max(1, filters[0] // se_hidden),
    )
