"""ResNet-18 front ends of the lip-reading encoders (Auto-AVSR, AV-HuBERT).

Both projects use the same residual trunk (BasicBlocks ``[2, 2, 2, 2]``, widths
``64/128/256/512``, downsample = 1x1 conv + BatchNorm); they differ in the
activation: AV-HuBERT uses PReLU (learned, one slope per channel), Auto-AVSR
swish (SiLU). Module attribute names follow the original checkpoints so that their
state dicts load without renaming:

- video: ``frontend3D.{0: Conv3d, 1: BatchNorm3d, 2: act, 3: MaxPool3d}`` then
  ``trunk.layer{1..4}.{0,1}.{conv1,bn1,relu1,conv2,bn2,relu2,downsample.{0,1}}``;
- audio (Auto-AVSR): ``trunk.{conv1,bn1,relu}`` then the same 1-D blocks and an
  average pool of 20 steps (640 samples per output step = 25 Hz at 16 kHz).

``widths`` exists for tiny test models; the real networks use the default.
This module imports torch: import it only where a model is built.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS = ("swish", "prelu", "relu")
RESNET18_WIDTHS = (64, 128, 256, 512)
AUDIO_SAMPLES_PER_STEP = 640  # conv1 stride 4 x three stride-2 stages x pool 20


def activation(kind: str, channels: int) -> nn.Module:
    """The front-end activation: ``swish`` (SiLU), ``prelu`` (per channel) or ``relu``."""
    if kind == "swish":
        return nn.SiLU()
    if kind == "prelu":
        return nn.PReLU(num_parameters=channels)
    if kind == "relu":
        return nn.ReLU()
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {kind!r}")


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a residual connection (2-D or 1-D)."""

    def __init__(self, dims: int, inplanes: int, planes: int, stride: int, act: str) -> None:
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv1d
        norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
        self.conv1 = conv(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm(planes)
        self.relu1 = activation(act, planes)
        self.conv2 = conv(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = norm(planes)
        self.relu2 = activation(act, planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                conv(inplanes, planes, 1, stride=stride, bias=False), norm(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + residual)


def _stages(module: nn.Module, dims: int, widths: Sequence[int], act: str, inplanes: int) -> None:
    """Add ``layer1..layer4`` (two blocks each; stages 2-4 stride 2) to ``module``."""
    for i, planes in enumerate(widths):
        stride = 1 if i == 0 else 2
        blocks = [
            BasicBlock(dims, inplanes, planes, stride, act),
            BasicBlock(dims, planes, planes, 1, act),
        ]
        module.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        inplanes = planes


class ResNetTrunk2d(nn.Module):
    """Per-frame 2-D ResNet-18 trunk: ``[N, C0, H, W]`` -> ``[N, widths[-1]]`` (global mean)."""

    def __init__(self, widths: Sequence[int], act: str) -> None:
        super().__init__()
        _stages(self, 2, widths, act, widths[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return x.mean(dim=(2, 3))  # AdaptiveAvgPool2d(1), flattened


class VideoResNet(nn.Module):
    """3-D stem + 2-D ResNet-18: grey frames ``[B, T, H, W]`` -> ``[B, T, widths[-1]]``.

    The stem's temporal kernel (5, padding 2) is the only place frames mix, so a
    zero-padded batch (zeros in the normalised domain) gives each clip the rows it
    would get alone.
    """

    def __init__(self, *, act: str = "swish", widths: Sequence[int] = RESNET18_WIDTHS) -> None:
        super().__init__()
        stem = widths[0]
        self.frontend3D = nn.Sequential(
            nn.Conv3d(1, stem, (5, 7, 7), stride=(1, 2, 2), padding=(2, 3, 3), bias=False),
            nn.BatchNorm3d(stem),
            activation(act, stem),
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
        )
        self.trunk = ResNetTrunk2d(widths, act)
        self.out_dim = int(widths[-1])

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        b, t = frames.shape[:2]
        x = self.frontend3D(frames.unsqueeze(1))  # [B, C0, T, H', W']
        x = x.transpose(1, 2).reshape(b * t, *x.shape[1:2], *x.shape[3:])  # [B*T, C0, H', W']
        return self.trunk(x).view(b, t, -1)  # [B, T, D]


class _AudioTrunk(nn.Module):
    def __init__(self, widths: Sequence[int], act: str) -> None:
        super().__init__()
        stem = widths[0]
        self.conv1 = nn.Conv1d(1, stem, kernel_size=80, stride=4, padding=38, bias=False)
        self.bn1 = nn.BatchNorm1d(stem)
        self.relu = activation(act, stem)
        _stages(self, 1, widths, act, stem)
        self.avgpool = nn.AvgPool1d(kernel_size=20, stride=20)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return self.avgpool(x)


class AudioResNet(nn.Module):
    """1-D ResNet-18 on the raw 16 kHz waveform: ``[B, S]`` -> ``[B, S // 640, widths[-1]]``.

    Trailing samples short of a whole 640-sample step are dropped (as Auto-AVSR
    does). Convolutions see across the whole waveform, so run one clip at a time
    (or pad with care): padded samples change the last rows of a clip.
    """

    def __init__(self, *, act: str = "swish", widths: Sequence[int] = RESNET18_WIDTHS) -> None:
        super().__init__()
        self.trunk = _AudioTrunk(widths, act)
        self.out_dim = int(widths[-1])

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        n = audio.shape[1] // AUDIO_SAMPLES_PER_STEP * AUDIO_SAMPLES_PER_STEP
        x = self.trunk(audio[:, None, :n])  # [B, D, n // 640]
        return x.transpose(1, 2)  # [B, T, D]
