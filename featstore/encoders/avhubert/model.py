"""AV-HuBERT's encoder in plain PyTorch, with fairseq's module names (so its keys load as they are).

The inference path of ``AVHubertModel.extract_finetune`` (eval mode, no masking,
no dropout):

```
audio [B, T, 104] -> feature_extractor_audio.proj                  -> [B, T, D]
video [B, 1, T, 88, 88] -> feature_extractor_video.resnet (3-D conv stem + ResNet-18 per frame)
                        -> [B, T, 512] -> feature_extractor_video.proj -> [B, T, D]
a missing modality: zeros [B, T, D] in place of its front end's output
concat(audio, video) [B, T, 2D] -> layer_norm -> post_extract_proj -> [B, T, D]
encoder: x + pos_conv(x) -> 24 blocks -> (layer_norm_first) encoder.layer_norm on the last
```

:meth:`AVHubertModel.forward` returns hidden states numbered as DESIGN.md's layers:
0 = the input of the first block (``x + pos_conv(x)``; with post-LN blocks, after
``encoder.layer_norm`` as fairseq applies it there), ``i`` = the output of block ``i``
(fairseq's 1-based ``output_layer=i``, which stops before the final LayerNorm),
``"last"`` = the output of the last block through ``encoder.layer_norm`` for pre-LN
models (fairseq's ``output_layer=None``, what AVH-Align and SpeechForensics use).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from featstore.encoders.avhubert.config import AVHubertConfig
from featstore.layout import LAST, Layer

__all__ = ["AVHubertModel"]

LN_EPS = 1e-5  # fairseq.modules.LayerNorm


def _relu(kind: str, channels: int) -> nn.Module:
    return nn.PReLU(num_parameters=channels) if kind == "prelu" else nn.ReLU()


class BasicBlock(nn.Module):
    """ResNet BasicBlock with per-block (P)ReLU modules ``relu1``/``relu2``."""

    def __init__(self, inplanes: int, planes: int, stride: int, relu_type: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = _relu(relu_type, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = _relu(relu_type, planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + residual)


class ResNetTrunk(nn.Module):
    """ResNet-18 stages ``layer1..layer4`` (2 blocks each) and a global average pool."""

    def __init__(self, inplanes: int, planes: tuple[int, ...], relu_type: str) -> None:
        super().__init__()
        for i, width in enumerate(planes, start=1):
            stride = 1 if i == 1 else 2
            blocks = [
                BasicBlock(inplanes, width, stride, relu_type),
                BasicBlock(width, width, 1, relu_type),
            ]
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
            inplanes = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, C, H, W] -> [N, planes[-1]]
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return x.mean(dim=(2, 3))


class ResEncoder(nn.Module):
    """3-D conv stem over time and space, then the 2-D trunk on every frame."""

    def __init__(self, config: AVHubertConfig) -> None:
        super().__init__()
        c = config.frontend_channels
        self.frontend3D = nn.Sequential(
            nn.Conv3d(1, c, (5, 7, 7), stride=(1, 2, 2), padding=(2, 3, 3), bias=False),
            nn.BatchNorm3d(c),
            _relu(config.resnet_relu_type, c),
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
        )
        self.trunk = ResNetTrunk(c, config.resnet_planes, config.resnet_relu_type)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, 1, T, H, W] -> [B, T, C]
        b = x.shape[0]
        x = self.frontend3D(x)  # [B, C, T, H/4, W/4]
        t = x.shape[2]
        x = x.transpose(1, 2).reshape(b * t, *x.shape[1:2], *x.shape[3:])  # [B*T, C, h, w]
        return self.trunk(x).view(b, t, -1)  # [B, T, planes[-1]]


class AudioFrontEnd(nn.Module):
    def __init__(self, config: AVHubertConfig) -> None:
        super().__init__()
        self.proj = nn.Linear(config.audio_feat_dim, config.encoder_embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, 104] -> [B, T, D]
        return self.proj(x)


class VideoFrontEnd(nn.Module):
    def __init__(self, config: AVHubertConfig) -> None:
        super().__init__()
        self.resnet = ResEncoder(config)
        self.proj = nn.Linear(config.resnet_planes[-1], config.encoder_embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, 1, T, 88, 88] -> [B, T, D]
        return self.proj(self.resnet(x))


class WeightNormConv1d(nn.Module):
    """Conv1d with weight norm over dim 2 (``weight = g * v / ||v||``, norm over dims 0, 1),
    stored as fairseq stores it: ``weight_g [1, 1, K]``, ``weight_v [D, D / groups, K]``, ``bias``."""

    def __init__(self, dim: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.weight_g = nn.Parameter(torch.ones(1, 1, kernel))
        self.weight_v = nn.Parameter(torch.empty(dim, dim // groups, kernel))
        self.bias = nn.Parameter(torch.zeros(dim))
        nn.init.normal_(self.weight_v, std=0.02)
        self.padding, self.groups = kernel // 2, groups

    def weight(self) -> torch.Tensor:
        norm = self.weight_v.norm(dim=(0, 1), keepdim=True)  # [1, 1, K]
        return self.weight_v * (self.weight_g / norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, D, T] -> [B, D, T + 1 (even K)]
        return F.conv1d(x, self.weight(), self.bias, padding=self.padding, groups=self.groups)


class SamePad(nn.Module):
    """Drop the extra last step an even kernel with ``padding = K // 2`` produces."""

    def __init__(self, kernel: int) -> None:
        super().__init__()
        self.remove = 1 if kernel % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, : -self.remove] if self.remove else x


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.v_proj, self.out_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        b, t, d = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:  # [B, T, D] -> [B, H, T, D / H]
            return y.view(b, t, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)  # [B, H, T, D / H]
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))


class EncoderLayer(nn.Module):
    """fairseq's ``TransformerSentenceEncoderLayer`` (pre- or post-LN)."""

    def __init__(self, config: AVHubertConfig) -> None:
        super().__init__()
        d = config.encoder_embed_dim
        self.self_attn = SelfAttention(d, config.encoder_attention_heads)
        self.self_attn_layer_norm = nn.LayerNorm(d, eps=LN_EPS)
        self.fc1 = nn.Linear(d, config.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(config.encoder_ffn_embed_dim, d)
        self.final_layer_norm = nn.LayerNorm(d, eps=LN_EPS)
        self.act = F.gelu if config.activation_fn == "gelu" else F.relu
        self.pre_ln = config.layer_norm_first

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        if self.pre_ln:
            x = x + self.self_attn(self.self_attn_layer_norm(x), keep)
            return x + self.fc2(self.act(self.fc1(self.final_layer_norm(x))))
        x = self.self_attn_layer_norm(x + self.self_attn(x, keep))
        return self.final_layer_norm(x + self.fc2(self.act(self.fc1(x))))


class TransformerEncoder(nn.Module):
    def __init__(self, config: AVHubertConfig) -> None:
        super().__init__()
        d = config.encoder_embed_dim
        self.pos_conv = nn.Sequential(
            WeightNormConv1d(d, config.conv_pos, config.conv_pos_groups),
            SamePad(config.conv_pos),
            nn.GELU(),
        )
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.encoder_layers))
        self.layer_norm = nn.LayerNorm(d, eps=LN_EPS)
        self.layer_norm_first = config.layer_norm_first

    def forward(
        self, x: torch.Tensor, pad: torch.Tensor | None, wanted: set[Layer]
    ) -> dict[Layer, torch.Tensor]:
        """``x [B, T, D]``, ``pad [B, T]`` (True = padding) -> the ``wanted`` hidden states."""
        if pad is not None:
            x = x.masked_fill(pad[..., None], 0.0)  # as fairseq: padding is zero for pos_conv
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)  # [B, T, D]
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        keep = None if pad is None else ~pad[:, None, None, :]  # [B, 1, 1, T]
        out: dict[Layer, torch.Tensor] = {}
        if 0 in wanted:
            out[0] = x
        deepest = len(self.layers) if LAST in wanted else max(k for k in wanted if k != LAST)
        for i, layer in enumerate(self.layers[:deepest], start=1):
            x = layer(x, keep)
            if i in wanted:
                out[i] = x
        if LAST in wanted:
            out[LAST] = self.layer_norm(x) if self.layer_norm_first else x
        return out


class AVHubertModel(nn.Module):
    """The encoder part of ``AVHubertModel`` (what ``extract_finetune`` runs)."""

    def __init__(self, config: AVHubertConfig) -> None:
        super().__init__()
        self.config = config
        self.feature_extractor_audio = AudioFrontEnd(config)
        self.feature_extractor_video = VideoFrontEnd(config)
        self.layer_norm = nn.LayerNorm(config.fused_dim, eps=LN_EPS)
        self.post_extract_proj = (
            nn.Linear(config.fused_dim, config.encoder_embed_dim)
            if config.fused_dim != config.encoder_embed_dim
            else None
        )
        self.encoder = TransformerEncoder(config)

    def fuse(self, audio: torch.Tensor | None, video: torch.Tensor | None) -> torch.Tensor:
        """Front-end outputs ``[B, T, D]`` (None: zeros) -> the encoder's input ``[B, T, D]``."""
        ref = audio if audio is not None else video
        if ref is None:
            raise ValueError("AV-HuBERT needs audio, video or both")
        zeros = ref.new_zeros(ref.shape)
        audio = zeros if audio is None else audio
        video = zeros if video is None else video
        if self.config.modality_fuse == "concat":
            x = torch.cat([audio, video], dim=-1)  # [B, T, 2D], audio first
        else:
            x = audio + video
        x = self.layer_norm(x)
        return x if self.post_extract_proj is None else self.post_extract_proj(x)

    def forward(
        self,
        audio: torch.Tensor | None,
        video: torch.Tensor | None,
        *,
        pad: torch.Tensor | None,
        layers: Iterable[Layer],
    ) -> dict[Layer, torch.Tensor]:
        """``audio [B, T, 104]`` and/or ``video [B, 1, T, 88, 88]`` (normalised; same ``T``)
        -> ``{layer: [B, T, D]}`` for ``layers`` (ints ``0..L`` and ``"last"``)."""
        a = None if audio is None else self.feature_extractor_audio(audio)  # [B, T, D]
        v = None if video is None else self.feature_extractor_video(video)  # [B, T, D]
        return self.encoder(self.fuse(a, v), pad, set(layers))
