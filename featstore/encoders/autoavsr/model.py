"""Auto-AVSR encoder modules in plain PyTorch (no espnet), canonical key names.

A :class:`Branch` is front end -> ``proj_encoder`` Linear -> Conformer; the
audio-visual model runs a video and an audio branch to their final norms and fuses
them (video first, as Auto-AVSR concatenates) with ``fusion``: fc1 -> BatchNorm1d ->
ReLU -> fc2. Single-modality models are a bare :class:`Branch`.
"""

from __future__ import annotations

import torch
from torch import nn

from featstore.encoders.autoavsr.config import AutoAVSRConfig, BranchConfig
from featstore.encoders.autoavsr.conformer import Conformer
from featstore.encoders.resnet import AudioResNet, VideoResNet


class Branch(nn.Module):
    """One modality's encoder; ``forward`` returns hidden states 0..n and the final norm."""

    def __init__(self, cfg: BranchConfig) -> None:
        super().__init__()
        front = VideoResNet if cfg.frontend == "video" else AudioResNet
        self.frontend = front(act="swish", widths=cfg.widths)
        self.proj_encoder = nn.Linear(cfg.widths[-1], cfg.d_model)
        self.encoder = Conformer(
            d_model=cfg.d_model,
            n_heads=cfg.n_heads,
            ffn_dim=cfg.ffn_dim,
            n_blocks=cfg.n_blocks,
            kernel_size=cfg.conv_kernel,
        )

    def forward(
        self, features: torch.Tensor, mask: torch.Tensor | None, *, upto: int | None = None
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """``features [B, T, widths[-1]]`` (front-end output) -> (states, final)."""
        return self.encoder(self.proj_encoder(features), mask, upto=upto)


class Fusion(nn.Module):
    """The audio-visual model's MLP head: ``[B, T, 2D] -> [B, T, D]``."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden)
        self.bn1 = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.fc1(x).transpose(1, 2)).transpose(1, 2)  # BatchNorm over channels
        return self.fc2(torch.relu(x))


class AudioVisualModel(nn.Module):
    """Video and audio branches (canonical ``video.*``, ``audio.*``) and ``fusion.*``."""

    def __init__(self, cfg: AutoAVSRConfig) -> None:
        super().__init__()
        if cfg.video is None or cfg.audio is None:
            raise ValueError("an audio-visual Auto-AVSR config needs both branches")
        self.video = Branch(cfg.video)
        self.audio = Branch(cfg.audio)
        d = cfg.video.d_model
        self.fusion = Fusion(d + cfg.audio.d_model, cfg.fusion_hidden, d)


def build_model(cfg: AutoAVSRConfig) -> Branch | AudioVisualModel:
    """The module whose ``state_dict`` keys are the canonical ones of ``cfg``."""
    if cfg.modality == "audiovisual":
        return AudioVisualModel(cfg)
    branch = cfg.video if cfg.modality == "visual" else cfg.audio
    if branch is None:
        raise ValueError(f"an Auto-AVSR {cfg.modality} config needs its branch")
    return Branch(branch)
