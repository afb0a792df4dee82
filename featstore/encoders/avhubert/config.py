"""AV-HuBERT's architecture settings, read from a fairseq checkpoint's config (torch-free).

A checkpoint's ``cfg['model']`` (or legacy ``args``) holds only the keys its training
yaml or command line set; the others take ``AVHubertConfig``'s defaults, which are
the *base* model's (12 layers, 768 wide). Fine-tuned checkpoints
(``AVHubertSeq2Seq``) hold the pre-training config under ``cfg['model']['w2v_args']``.
The ResNet trunk widths are not fairseq settings (AV-HuBERT fixes them to ResNet-18's
64/128/256/512); featstore reads them from the weights' shapes so that tests can use a
narrow trunk.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from featstore.encoders.base import CheckpointError

__all__ = ["BASE", "LARGE", "AVHubertConfig", "config_from_checkpoint"]


@dataclass(frozen=True)
class AVHubertConfig:
    """The settings that shape AV-HuBERT's encoder (defaults: fairseq ``AVHubertConfig``)."""

    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    activation_fn: str = "gelu"
    layer_norm_first: bool = False
    conv_pos: int = 128
    conv_pos_groups: int = 16
    audio_feat_dim: int = 104  # fairseq's default is -1; every released model sets 104
    modality_fuse: str = "concat"
    resnet_relu_type: str = "prelu"
    sub_encoder_layers: int = 0
    # not fairseq settings: ResNet-18 widths, read from the weights' shapes
    frontend_channels: int = 64
    resnet_planes: tuple[int, ...] = (64, 128, 256, 512)

    def __post_init__(self) -> None:
        problems = []
        if self.modality_fuse not in ("concat", "add"):
            problems.append(f"modality_fuse={self.modality_fuse!r} (concat or add)")
        if self.resnet_relu_type not in ("prelu", "relu"):
            problems.append(f"resnet_relu_type={self.resnet_relu_type!r} (prelu or relu)")
        if self.activation_fn not in ("gelu", "relu"):
            problems.append(f"activation_fn={self.activation_fn!r} (gelu or relu)")
        if self.sub_encoder_layers != 0:
            problems.append(
                f"sub_encoder_layers={self.sub_encoder_layers} (per-modality transformers "
                "are not supported; released models use 0)"
            )
        if self.encoder_embed_dim % self.encoder_attention_heads:
            problems.append("encoder_embed_dim not divisible by encoder_attention_heads")
        if self.encoder_embed_dim % self.conv_pos_groups:
            problems.append("encoder_embed_dim not divisible by conv_pos_groups")
        if len(self.resnet_planes) != 4:
            problems.append(f"resnet_planes={self.resnet_planes} (4 stages)")
        if problems:
            raise CheckpointError("unsupported AV-HuBERT config: " + "; ".join(problems))

    @property
    def fused_dim(self) -> int:
        """Width after fusing audio and video (the feature LayerNorm's size)."""
        return (
            2 * self.encoder_embed_dim if self.modality_fuse == "concat" else self.encoder_embed_dim
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["resnet_planes"] = list(self.resnet_planes)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AVHubertConfig:
        """Known keys of ``d`` over the defaults; unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: d[k] for k in names if k in d and d[k] is not None}
        if "resnet_planes" in kwargs:
            kwargs["resnet_planes"] = tuple(int(x) for x in kwargs["resnet_planes"])
        try:
            for f in dataclasses.fields(cls):
                if f.name in kwargs and f.type in ("int", "bool", "str"):
                    kwargs[f.name] = {"int": int, "bool": bool, "str": str}[f.type](kwargs[f.name])
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"bad AV-HuBERT config value: {exc}") from None


LARGE = AVHubertConfig(
    encoder_layers=24,
    encoder_embed_dim=1024,
    encoder_ffn_embed_dim=4096,
    encoder_attention_heads=16,
    layer_norm_first=True,
)
"""``self_large_vox_433h`` / ``large_vox_iter5``: the paper's model."""
BASE = AVHubertConfig(layer_norm_first=True)
"""``base_vox_iter5`` / ``base_lrs3_iter5`` (their yaml sets ``layer_norm_first: true``)."""


def _model_section(cfg: Any) -> tuple[Mapping[str, Any], bool]:
    """The AV-HuBERT model settings of a checkpoint config, and whether it is fine-tuned."""
    if not isinstance(cfg, Mapping):
        raise CheckpointError("checkpoint config is not a mapping")
    model = cfg.get("model", cfg)
    if not isinstance(model, Mapping):
        raise CheckpointError("checkpoint config has no 'model' section")
    w2v = model.get("w2v_args")
    if isinstance(w2v, Mapping):  # fine-tuned: the pre-trained model's config
        inner = w2v.get("model", w2v)
        if not isinstance(inner, Mapping):
            raise CheckpointError("checkpoint config's w2v_args has no 'model' section")
        return inner, True
    return model, False


def config_from_checkpoint(
    cfg: Any, *, shapes: Mapping[str, tuple[int, ...]] | None = None
) -> AVHubertConfig:
    """The architecture from a checkpoint's plain config (``cfg`` dict or ``vars(args)``).

    Keys the config does not set take fairseq's defaults (the base model), except
    what the weights' ``shapes`` (keys without the fine-tuning prefix) decide: the
    layer count, widths, ResNet trunk widths and relu type. A config that
    disagrees with the weights raises :class:`CheckpointError`.
    """
    section, _ = _model_section(cfg) if cfg is not None else ({}, False)
    merged = dict(section)
    derived = _from_shapes(shapes or {})
    for key, value in derived.items():
        stated = section.get(key)
        if stated is not None and key != "resnet_planes" and type(value)(stated) != value:
            raise CheckpointError(
                f"checkpoint config says {key}={stated} but its weights have {value}"
            )
        merged[key] = value
    if section.get("encoder_attention_heads") is None and "encoder_embed_dim" in derived:
        # not visible in the weights; every released model has 64-wide heads
        merged["encoder_attention_heads"] = max(1, derived["encoder_embed_dim"] // 64)
    return AVHubertConfig.from_dict(merged)


def _from_shapes(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    layers = {int(k.split(".")[2]) for k in shapes if k.startswith("encoder.layers.")}
    if layers:
        out["encoder_layers"] = max(layers) + 1
    if "encoder.layers.0.fc1.weight" in shapes:
        ffn, dim = shapes["encoder.layers.0.fc1.weight"]
        out["encoder_ffn_embed_dim"], out["encoder_embed_dim"] = ffn, dim
    if "feature_extractor_audio.proj.weight" in shapes:
        out["audio_feat_dim"] = shapes["feature_extractor_audio.proj.weight"][1]
    if "encoder.pos_conv.0.weight_v" in shapes:
        dim, per_group, kernel = shapes["encoder.pos_conv.0.weight_v"]
        out["conv_pos"] = kernel
        out["conv_pos_groups"] = dim // per_group
    if "layer_norm.weight" in shapes and "encoder_embed_dim" in out:
        fused = shapes["layer_norm.weight"][0]
        out["modality_fuse"] = "concat" if fused == 2 * out["encoder_embed_dim"] else "add"
    front = "feature_extractor_video.resnet.frontend3D."
    if front + "0.weight" in shapes:
        out["frontend_channels"] = shapes[front + "0.weight"][0]
        out["resnet_relu_type"] = "prelu" if front + "2.weight" in shapes else "relu"
    trunk = "feature_extractor_video.resnet.trunk.layer{}.0.conv1.weight"
    if all(trunk.format(i) in shapes for i in range(1, 5)):
        out["resnet_planes"] = tuple(shapes[trunk.format(i)][0] for i in range(1, 5))
    return out
