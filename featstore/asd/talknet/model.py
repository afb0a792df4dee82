"""TalkNet-ASD (Tao et al., ACM MM 2021) in plain PyTorch.

The layout mirrors the original ``talkNetModel`` module by module (PEERS.md "TalkNet-ASD"),
so that its checkpoint loads with a prefix rename only (``weights.py``). Two things differ
from the original code, neither in what it computes for one clip:

- the visual front end takes a batch ``[B, T, 112, 112]`` and runs the 3-D convolution
  over each clip's own frames; the original folds ``B * T`` frames into one sequence (its
  callers always pass ``B = 1``), so a batch of windows here equals the windows run one by
  one there;
- the cross-attention layer is named for what it does: the *target* stream queries the
  *source* stream, and the residual is the source (as ``attentionLayer(src, tar)``).

Only the audio-visual head (``lossAV.FC``) is kept: the audio-only and visual-only heads
of TalkNet's training loss are not used to score.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from featstore.asd.talknet.config import FULL, TalkNetConfig

__all__ = ["MEAN", "STD", "TalkNet"]

MEAN, STD = 0.4161, 0.1688  # grey face crops: (x / 255 - MEAN) / STD


class _ResNetLayer(nn.Module):
    """Two basic blocks; BN momentum 0.01, eps 1e-3 (the lip-reading ResNet of deep_avsr)."""

    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()

        def bn() -> nn.BatchNorm2d:
            return nn.BatchNorm2d(planes, momentum=0.01, eps=0.001)

        self.stride = stride
        self.conv1a = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1a = bn()
        self.conv2a = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        # present (and in the checkpoint) for every stage, used only when striding
        self.downsample = nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False)
        self.outbna = bn()
        self.conv1b = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn1b = bn()
        self.conv2b = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.outbnb = bn()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2a(F.relu(self.bn1a(self.conv1a(x))))
        y = y + (x if self.stride == 1 else self.downsample(x))
        mid = y
        y = F.relu(self.outbna(y))
        y = self.conv2b(F.relu(self.bn1b(self.conv1b(y))))
        return F.relu(self.outbnb(y + mid))


class _ResNet(nn.Module):
    def __init__(self, planes: tuple[int, int, int, int]) -> None:
        super().__init__()
        self.layer1 = _ResNetLayer(planes[0], planes[0], 1)
        self.layer2 = _ResNetLayer(planes[0], planes[1], 2)
        self.layer3 = _ResNetLayer(planes[1], planes[2], 2)
        self.layer4 = _ResNetLayer(planes[2], planes[3], 2)
        self.avgpool = nn.AvgPool2d(kernel_size=(4, 4), stride=(1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x)  # [N, C, 1, 1] for 112x112 crops


class _VisualFrontend(nn.Module):
    def __init__(self, cfg: TalkNetConfig) -> None:
        super().__init__()
        c = cfg.frontend_channels
        self.frontend3d = nn.Sequential(
            nn.Conv3d(1, c, (5, 7, 7), stride=(1, 2, 2), padding=(2, 3, 3), bias=False),
            nn.BatchNorm3d(c, momentum=0.01, eps=0.001),
            nn.ReLU(),
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
        )
        self.resnet = _ResNet(cfg.resnet_planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[:2]  # x: [B, T, H, W], normalised
        y = self.frontend3d(x.unsqueeze(1))  # [B, C, T, 28, 28]
        y = y.transpose(1, 2).reshape(b * t, *y.shape[1:2], *y.shape[3:])  # [B*T, C, 28, 28]
        y = self.resnet(y)  # [B*T, D, 1, 1]
        return y.reshape(b, t, -1)  # [B, T, D]


class _GlobalLayerNorm(nn.Module):
    """Normalise over channels and time together (per clip), then scale and shift per channel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(1, channels, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        mean = y.mean(dim=1, keepdim=True).mean(dim=2, keepdim=True)  # [B, 1, 1]
        var = (y - mean).pow(2).mean(dim=1, keepdim=True).mean(dim=2, keepdim=True)
        return self.gamma * (y - mean) / torch.pow(var + 1e-8, 0.5) + self.beta


class _DSConv1d(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.ReLU(),
            nn.BatchNorm1d(channels),
            nn.Conv1d(channels, channels, 3, padding=1, groups=channels, bias=False),
            nn.PReLU(),
            _GlobalLayerNorm(channels),
            nn.Conv1d(channels, channels, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) + x


class _VisualTCN(nn.Module):
    def __init__(self, channels: int, blocks: int) -> None:
        super().__init__()
        self.net = nn.Sequential(*[_DSConv1d(channels) for _ in range(blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _VisualConv1d(nn.Module):
    def __init__(self, channels: int, hidden: int, out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(channels, hidden, 5, padding=2),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Conv1d(hidden, out, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _SELayer(nn.Module):
    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction),
            nn.ReLU(inplace=True),
            nn.Linear(channels // reduction, channels),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        return x * self.fc(self.avg_pool(x).view(b, c)).view(b, c, 1, 1)


class _SEBasicBlock(nn.Module):
    """As the original: conv -> ReLU -> BN (ReLU before the norm), conv -> BN -> SE, residual."""

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int | tuple[int, int],
        downsample: nn.Module | None,
        reduction: int,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.se = _SELayer(planes, reduction)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(F.relu(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        residual = x if self.downsample is None else self.downsample(x)
        return F.relu(out + residual)


class _AudioEncoder(nn.Module):
    def __init__(self, cfg: TalkNetConfig) -> None:
        super().__init__()
        f, r = cfg.audio_filters, cfg.se_reduction
        self.conv1 = nn.Conv2d(1, f[0], 7, stride=(2, 1), padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(f[0])
        self.inplanes = f[0]
        # stage strides as the original passes them: an int 1, then tuples; a tuple is
        # never == 1 there, so stages 2-4 always get a projection shortcut
        self.layer1 = self._stage(f[0], cfg.audio_layers[0], 1, r)
        self.layer2 = self._stage(f[1], cfg.audio_layers[1], (2, 2), r)
        self.layer3 = self._stage(f[2], cfg.audio_layers[2], (2, 2), r)
        self.layer4 = self._stage(f[3], cfg.audio_layers[3], (1, 1), r)

    def _stage(
        self, planes: int, blocks: int, stride: int | tuple[int, int], reduction: int
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        layers = [_SEBasicBlock(self.inplanes, planes, stride, downsample, reduction)]
        self.inplanes = planes
        layers += [_SEBasicBlock(planes, planes, 1, None, reduction) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))  # x: [B, 1, 13, Ta]
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # [B, D, 2, Ta / 4]
        return x.mean(dim=2).transpose(1, 2)  # [B, Ta / 4, D]


class _AttentionLayer(nn.Module):
    """Post-norm Transformer layer whose queries come from ``target`` (TalkNet's
    ``attentionLayer``); dropout 0.1 is inactive in eval mode."""

    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, heads, dropout=0.1)
        self.linear1 = nn.Linear(d_model, 4 * d_model)
        self.linear2 = nn.Linear(4 * d_model, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(0.1)

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        src = source.transpose(0, 1)  # [T, B, C]
        tar = target.transpose(0, 1)
        attended = self.self_attn(tar, src, src, need_weights=False)[0]
        src = self.norm1(src + self.dropout(attended))
        src = self.norm2(src + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(src))))))
        return src.transpose(0, 1)  # [B, T, C]


class TalkNet(nn.Module):
    """Per-frame speaking logits from MFCC ``[B, 4T, 13]`` and grey face crops ``[B, T, 112, 112]``.

    ``forward`` returns ``[B, T]``: the audio-visual head's class-1 output, which the
    original demo uses as the score (speaking where >= 0).
    """

    def __init__(self, config: TalkNetConfig = FULL) -> None:
        super().__init__()
        self.config = config
        d = config.embed_dim
        self.visual_frontend = _VisualFrontend(config)
        self.visual_tcn = _VisualTCN(config.visual_dim, config.tcn_blocks)
        self.visual_conv1d = _VisualConv1d(config.visual_dim, config.visual_hidden, d)
        self.audio_encoder = _AudioEncoder(config)
        self.cross_a2v = _AttentionLayer(d, config.heads)
        self.cross_v2a = _AttentionLayer(d, config.heads)
        self.self_av = _AttentionLayer(2 * d, config.heads)
        self.av_head = nn.Linear(2 * d, 2)

    def embed_visual(self, crops: torch.Tensor) -> torch.Tensor:
        """``[B, T, 112, 112]`` grey 0..255 -> ``[B, T, D]``."""
        x = (crops / 255 - MEAN) / STD
        x = self.visual_frontend(x).transpose(1, 2)  # [B, 512, T]
        x = self.visual_conv1d(self.visual_tcn(x))  # [B, D, T]
        return x.transpose(1, 2)

    def embed_audio(self, mfcc: torch.Tensor) -> torch.Tensor:
        """``[B, 4T, 13]`` -> ``[B, T, D]``."""
        return self.audio_encoder(mfcc.unsqueeze(1).transpose(2, 3))

    def forward(self, mfcc: torch.Tensor, crops: torch.Tensor) -> torch.Tensor:
        a = self.embed_audio(mfcc)
        v = self.embed_visual(crops)
        if a.shape[1] != v.shape[1]:
            raise ValueError(
                f"audio gives {a.shape[1]} steps but video {v.shape[1]}: pass 4 MFCC rows per frame"
            )
        a, v = self.cross_a2v(a, v), self.cross_v2a(v, a)
        x = self.self_av(torch.cat([a, v], dim=2), torch.cat([a, v], dim=2))  # [B, T, 2D]
        return self.av_head(x)[..., 1]  # [B, T]
