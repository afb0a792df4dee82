"""Auto-AVSR architectures and checkpoint layouts (torch-free: shapes and key names only).

Two layouts of the bare state dicts that Auto-AVSR publishes (PEERS.md "Auto-AVSR"):

- current (single modality): ``frontend.*``, ``proj_encoder.*``,
  ``encoder.encoders.<i>.*``, ``encoder.after_norm.*``, plus ``decoder.*``, ``ctc.*``;
- legacy (the older code, incl. the audio-visual model): front end and projection
  inside the encoder, ``encoder.frontend.*``, ``encoder.embed.0.*`` (and the unused
  ``encoder.embed.1.pe`` of old espnet); the audio-visual model adds a whole audio
  encoder ``aux_encoder.*`` and the fusion MLP ``fusion.{fc1,bn1,fc2}``.

Both are mapped onto one canonical naming, the one our modules use: a branch is
``frontend.*``, ``proj_encoder.*``, ``encoder.{encoders.<i>,after_norm}.*``; the
audio-visual model holds ``video.<branch>``, ``audio.<branch>`` and ``fusion.*``.
The architecture (widths, heads, blocks, kernel) is read from tensor shapes, so
tiny test checkpoints and the real ones load through the same code.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from featstore.encoders.base import CheckpointError

RESNET18_WIDTHS = (64, 128, 256, 512)
IGNORED_PREFIXES = ("decoder.", "ctc.", "proj_decoder.")
"""Heads of the speech recogniser, not part of the encoder: listed, never loaded."""
_PE_KEY = re.compile(r"(^|\.)embed\.1\.pe$")  # old espnet stored its sinusoid table


@dataclass(frozen=True)
class BranchConfig:
    """One encoder branch: ResNet-18 front end -> Linear -> Conformer -> after_norm."""

    frontend: str  # "video" (3-D conv + 2-D ResNet-18) | "audio" (1-D ResNet-18)
    d_model: int = 768
    n_heads: int = 12
    ffn_dim: int = 3072
    n_blocks: int = 12
    conv_kernel: int = 31
    widths: tuple[int, ...] = RESNET18_WIDTHS

    def __post_init__(self) -> None:
        if self.frontend not in ("video", "audio"):
            raise ValueError(f"frontend must be 'video' or 'audio', got {self.frontend!r}")


@dataclass(frozen=True)
class AutoAVSRConfig:
    """A whole model: one branch, or video + audio branches and the fusion MLP."""

    modality: str  # "audio" | "visual" | "audiovisual" (the EncoderSpec's modality)
    video: BranchConfig | None = None
    audio: BranchConfig | None = None
    fusion_hidden: int = 8192  # audio-visual only: fc1 1536 -> 8192, BN, ReLU, fc2 -> 768

    @property
    def n_blocks(self) -> int:
        return next(b.n_blocks for b in (self.video, self.audio) if b is not None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AutoAVSRConfig:
        def branch(d: Mapping[str, Any] | None) -> BranchConfig | None:
            return None if d is None else BranchConfig(**{**d, "widths": tuple(d["widths"])})

        try:
            return cls(
                modality=data["modality"],
                video=branch(data.get("video")),
                audio=branch(data.get("audio")),
                fusion_hidden=int(data.get("fusion_hidden", 8192)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"invalid Auto-AVSR config {dict(data)}: {exc}") from None


def default_config(modality: str) -> AutoAVSRConfig:
    """The published LRS3 models' architecture (768-d, 12 heads, FFN 3072, 12 blocks, k 31)."""
    video = BranchConfig("video") if modality in ("visual", "audiovisual") else None
    audio = BranchConfig("audio") if modality in ("audio", "audiovisual") else None
    return AutoAVSRConfig(modality=modality, video=video, audio=audio)


@dataclass(frozen=True)
class CanonicalCheckpoint:
    """A state dict renamed to our modules' keys, and what was left out of it."""

    state: dict[str, Any]
    ignored: list[str]  # decoder / CTC heads and old sinusoid tables
    layout: str  # "current" | "legacy"
    modality: str  # what the checkpoint holds: "audio" | "visual" | "audiovisual"


def _rename(key: str, renames: tuple[tuple[str, str], ...]) -> str | None:
    for old, new in renames:
        if key.startswith(old):
            return new + key[len(old) :]
    return None


_LEGACY = (
    ("encoder.frontend.", "frontend."),
    ("encoder.embed.0.", "proj_encoder."),
    ("encoder.input_layer.0.", "proj_encoder."),  # espnet's older name for embed
    ("encoder.norm.", "encoder.after_norm."),  # espnet's older name for after_norm
    ("encoder.", "encoder."),
)


def canonical_state_dict(state: Mapping[str, Any]) -> CanonicalCheckpoint:
    """Rename either layout to canonical keys; raise :class:`CheckpointError` if neither."""
    keys = list(state)
    ignored = [k for k in keys if k.startswith(IGNORED_PREFIXES) or _PE_KEY.search(k)]
    used = [k for k in keys if k not in set(ignored)]
    if any(k.startswith("aux_encoder.") for k in used):
        layout, modality = "legacy", "audiovisual"
        renames = (
            *((old, "video." + new) for old, new in _LEGACY),
            *(("aux_" + old, "audio." + new) for old, new in _LEGACY),
            ("fusion.", "fusion."),
        )
    elif any(k.startswith(("encoder.frontend.", "encoder.embed.0.")) for k in used):
        layout, modality, renames = "legacy", "", _LEGACY
    elif any(k.startswith(("frontend.", "proj_encoder.")) for k in used):
        layout, modality = "current", ""
        renames = tuple((p, p) for p in ("frontend.", "proj_encoder.", "encoder."))
    else:
        raise CheckpointError(
            "not an Auto-AVSR checkpoint: expected 'frontend.*'/'proj_encoder.*' (current "
            "layout) or 'encoder.frontend.*'/'encoder.embed.0.*' (legacy layout); first keys: "
            + ", ".join(keys[:5])
        )
    out: dict[str, Any] = {}
    unknown = []
    for key in used:
        new = _rename(key, renames)
        if new is None:
            unknown.append(key)
        else:
            out[new] = state[key]
    if unknown:
        raise CheckpointError(
            f"{len(unknown)} keys of the {layout} Auto-AVSR layout are not part of its "
            f"encoder: {', '.join(unknown[:8])}"
        )
    if not modality:
        modality = "visual" if "frontend.frontend3D.0.weight" in out else "audio"
    return CanonicalCheckpoint(state=out, ignored=ignored, layout=layout, modality=modality)


def _shape(state: Mapping[str, Any], key: str) -> tuple[int, ...]:
    try:
        return tuple(state[key].shape)
    except KeyError:
        raise CheckpointError(f"Auto-AVSR checkpoint lacks {key!r}") from None


def _branch_config(state: Mapping[str, Any], prefix: str) -> BranchConfig:
    frontend = "video" if f"{prefix}frontend.frontend3D.0.weight" in state else "audio"
    trunk = f"{prefix}frontend.trunk."
    widths = tuple(_shape(state, f"{trunk}layer{i}.0.conv1.weight")[0] for i in range(1, 5))
    blocks = {
        int(m.group(1))
        for k in state
        if (m := re.match(re.escape(prefix) + r"encoder\.encoders\.(\d+)\.", k))
    }
    if not blocks or blocks != set(range(len(blocks))):
        raise CheckpointError(
            f"Auto-AVSR checkpoint: encoder blocks {sorted(blocks)} under {prefix!r}"
        )
    block = f"{prefix}encoder.encoders.0."
    return BranchConfig(
        frontend=frontend,
        d_model=_shape(state, f"{prefix}proj_encoder.weight")[0],
        n_heads=_shape(state, f"{block}self_attn.pos_bias_u")[0],
        ffn_dim=_shape(state, f"{block}feed_forward.w_1.weight")[0],
        n_blocks=len(blocks),
        conv_kernel=_shape(state, f"{block}conv_module.depthwise_conv.weight")[-1],
        widths=widths,
    )


def infer_config(ckpt: CanonicalCheckpoint) -> AutoAVSRConfig:
    """The architecture of a canonical checkpoint, from its tensor shapes."""
    state = ckpt.state
    if ckpt.modality == "audiovisual":
        video, audio = _branch_config(state, "video."), _branch_config(state, "audio.")
        if (video.frontend, audio.frontend) != ("video", "audio"):
            raise CheckpointError(
                "Auto-AVSR AV checkpoint: 'encoder' must be video, 'aux_encoder' audio"
            )
        if video.n_blocks != audio.n_blocks:
            raise CheckpointError(
                f"Auto-AVSR AV checkpoint: {video.n_blocks} video vs {audio.n_blocks} audio blocks"
            )
        hidden = _shape(state, "fusion.fc1.weight")[0]
        return AutoAVSRConfig("audiovisual", video=video, audio=audio, fusion_hidden=hidden)
    branch = _branch_config(state, "")
    if branch.frontend == "video":
        return AutoAVSRConfig("visual", video=branch)
    return AutoAVSRConfig("audio", audio=branch)
