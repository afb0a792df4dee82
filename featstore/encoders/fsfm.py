"""FSFM ViT-B/16 face features, one row per 25 fps frame (PEERS.md "FSFM").

Plain-PyTorch ViT (no timm) loading FSFM's checkpoints (``wolo-wolo/FSFM-CVPR25``):
``checkpoint['model']`` holds ``patch_embed.proj``, ``cls_token``, ``pos_embed``,
``blocks.<i>.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}`` and a final norm;
pre-training extras (``decoder*``, ``rep_decoder*``, ``projector``, ``predictor``,
``mask_token``) and a fine-tuned classifier ``head`` are not loaded and are listed
in ``unused_keys``. Architecture (width, depth, heads, patch, MLP) is read from
tensor shapes; heads from the width (FSFM's ViT-S/B/L/H: 12/12/16/16; others 64 per head).

Input: ``[T, 224, 224, 3]`` RGB face crops from :mod:`featstore.crops` (resized
bicubic if another size), /255, normalised with FSFM's VGGFace2 mean/std.

Rows: the frame embedding is the mean of the patch tokens (the paper; default)
or, with ``pooling="cls"``, the CLS token. Layers: ``i`` = tokens after block
``i`` (0 = patch + position embeddings), pooled, no final norm. ``"last"``
follows the checkpoint's own final norm, which FSFM's code applies differently:

- pre-trained (``FSFMViT``, has ``norm``): the encoder output is
  ``norm(tokens)``; ``"last"`` pools the normalised tokens;
- fine-tuned with ``global_pool`` (``models_vit``, has ``fc_norm``): the patch
  tokens of the last block are averaged, then ``fc_norm`` is applied; ``"last"``
  applies ``fc_norm`` to the pooled vector (CLS or mean).

Default checkpoint: ``checkpoint-400.pth``, FSFM ViT-B/16 pre-trained on VGGFace2
(Hugging Face ``Wolowolo/fsfm-3c``, ``pretrained_models/VF2_ViT-B/``), looked up as
a local path or in ``$FEATSTORE_CHECKPOINTS``.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from featstore.encoders import register
from featstore.encoders.base import (
    CheckpointError,
    Clip,
    ClipError,
    Encoder,
    EncoderError,
    EncoderSpec,
)
from featstore.encoders.convert import register_converter
from featstore.layout import LAST, Layer

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

FAMILY = "fsfm"
SPEC = EncoderSpec(
    name="fsfm",
    family=FAMILY,
    modality="visual",
    crop="face",
    frame_hz=25.0,
    dim=768,
    n_layers=12,
    default_checkpoint="checkpoint-400.pth",
    description="FSFM ViT-B/16 (VGGFace2 pre-training), mean patch token per face crop",
)
# VGGFace2 face statistics as FSFM publishes them (FSFM-CVPR25 fsfm-3c/util/datasets.py,
# the fallback when no pretrain_ds_mean_std.txt is found; fsfm-3c/pretrain/main_pretrain.py)
MEAN = (0.5482207536697388, 0.42340534925460815, 0.3654651641845703)
STD = (0.2789176106452942, 0.2438540756702423, 0.23493893444538116)
LAYER_NORM_EPS = 1e-6
FSFM_HEADS = {384: 12, 768: 12, 1024: 16, 1280: 16}
"""Heads by width in FSFM's ViT-S/B/L/H (its ViT-S has 12 heads of 32, not timm's 6)."""
POOLINGS = ("mean", "cls")
OPTIONS = ("pooling", "frames_per_batch")
DEFAULT_FRAMES_PER_BATCH = 32
IGNORED_PREFIXES = (
    "decoder",
    "rep_decoder",
    "projector.",
    "predictor.",
    "mask_token",
    "head.",
)


@dataclass(frozen=True)
class ViTConfig:
    """A ViT encoder; the default is FSFM's ViT-B/16 pre-trained model
    (``fsfm_vit_base_patch16`` in FSFM-CVPR25 ``fsfm-3c/models_fsfm.py``: patch 16,
    width 768, depth 12, 12 heads, MLP ratio 4, LayerNorm eps 1e-6, 224 px input)."""

    img_size: int = 224
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    final_norm: str = "norm"  # "norm" (pre-trained) | "fc_norm" (fine-tuned, global pool)

    def __post_init__(self) -> None:
        if self.final_norm not in ("norm", "fc_norm"):
            raise ValueError(f"final_norm must be 'norm' or 'fc_norm', got {self.final_norm!r}")
        if self.img_size % self.patch_size or self.embed_dim % self.num_heads:
            raise ValueError(f"inconsistent ViT config {self}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ViTConfig:
        try:
            return cls(**dict(data))
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"invalid FSFM config {dict(data)}: {exc}") from None


def split_state_dict(state: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Encoder weights and the names of the (ignored) pre-training / classifier keys."""
    ignored = [k for k in state if k.startswith(IGNORED_PREFIXES)]
    skip = set(ignored)
    return {k: v for k, v in state.items() if k not in skip}, ignored


def infer_config(state: Mapping[str, Any]) -> ViTConfig:
    """The ViT architecture of an encoder state dict, from its tensor shapes."""
    try:
        embed, _, patch, _ = state["patch_embed.proj.weight"].shape
        n_tokens = state["pos_embed"].shape[1]
        mlp_dim = state["blocks.0.mlp.fc1.weight"].shape[0]
    except KeyError as exc:
        raise CheckpointError(f"not an FSFM ViT checkpoint: no {exc.args[0]!r}") from None
    side = round((n_tokens - 1) ** 0.5)
    if side * side != n_tokens - 1:
        raise CheckpointError(f"FSFM checkpoint: pos_embed of {n_tokens} tokens is not 1 + n^2")
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    if blocks != set(range(len(blocks))):
        raise CheckpointError(f"FSFM checkpoint: blocks {sorted(blocks)} are not 0..n-1")
    final = "fc_norm" if "fc_norm.weight" in state else "norm"
    return ViTConfig(
        img_size=side * int(patch),
        patch_size=int(patch),
        embed_dim=int(embed),
        depth=len(blocks),
        num_heads=FSFM_HEADS.get(int(embed), max(1, int(embed) // 64)),
        mlp_dim=int(mlp_dim),
        final_norm=final,
    )


def build_vit(cfg: ViTConfig) -> nn.Module:
    """A module whose ``state_dict`` keys are FSFM's (timm's) ViT encoder keys."""
    import torch
    from torch import nn

    def norm() -> nn.LayerNorm:
        return nn.LayerNorm(cfg.embed_dim, eps=LAYER_NORM_EPS)

    def block() -> nn.Module:
        b = nn.Module()
        b.norm1, b.norm2 = norm(), norm()
        b.attn = nn.Module()
        b.attn.qkv = nn.Linear(cfg.embed_dim, 3 * cfg.embed_dim)
        b.attn.proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)
        b.mlp = nn.Module()
        b.mlp.fc1 = nn.Linear(cfg.embed_dim, cfg.mlp_dim)
        b.mlp.fc2 = nn.Linear(cfg.mlp_dim, cfg.embed_dim)
        return b

    vit = nn.Module()
    vit.patch_embed = nn.Module()
    vit.patch_embed.proj = nn.Conv2d(3, cfg.embed_dim, cfg.patch_size, stride=cfg.patch_size)
    n_tokens = (cfg.img_size // cfg.patch_size) ** 2 + 1
    vit.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
    vit.pos_embed = nn.Parameter(torch.zeros(1, n_tokens, cfg.embed_dim))
    vit.blocks = nn.ModuleList(block() for _ in range(cfg.depth))
    vit.add_module(cfg.final_norm, norm())
    return vit


def vit_hidden_states(
    vit: nn.Module, cfg: ViTConfig, pixels: torch.Tensor, *, upto: int
) -> list[torch.Tensor]:
    """``pixels [N, 3, H, W]`` (normalised) -> tokens ``[N, 1 + P, D]`` after blocks 0..upto."""
    import torch
    import torch.nn.functional as F

    x = vit.patch_embed.proj(pixels).flatten(2).transpose(1, 2)  # [N, P, D]
    cls = vit.cls_token.expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1) + vit.pos_embed  # [N, 1 + P, D]
    states = [x]
    n, length, dim = x.shape
    heads = cfg.num_heads
    for blk in vit.blocks[:upto]:
        qkv = blk.attn.qkv(blk.norm1(x)).view(n, length, 3, heads, dim // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [N, H, L, d]
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, length, dim)
        x = x + blk.attn.proj(a)
        x = x + blk.mlp.fc2(F.gelu(blk.mlp.fc1(blk.norm2(x))))
        states.append(x)
    return states


def pool_tokens(tokens: torch.Tensor, pooling: str) -> torch.Tensor:
    """``[N, 1 + P, D]`` -> ``[N, D]``: mean of the patch tokens, or the CLS token."""
    return tokens[:, 1:].mean(dim=1) if pooling == "mean" else tokens[:, 0]


def face_pixels(frames: np.ndarray, size: int, device: str) -> torch.Tensor:
    """``uint8 [N, H, W, 3]`` RGB -> normalised ``float32 [N, 3, size, size]`` (bicubic if needed)."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(frames)).to(device).permute(0, 3, 1, 2).float()
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
        x = x.clamp(0.0, 255.0)
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    return (x / 255.0 - mean) / std


class FSFMEncoder(Encoder):
    """A loaded FSFM ViT."""

    def __init__(
        self,
        spec: EncoderSpec,
        vit: nn.Module,
        config: ViTConfig,
        *,
        pooling: str,
        frames_per_batch: int,
        checkpoint: str | None,
        checkpoint_sha256: str | None,
        random_init: bool,
        device: str,
        compute_dtype: str,
        unused_keys: Sequence[str] = (),
    ) -> None:
        layer_dims: dict[Layer, int] = dict.fromkeys(range(config.depth + 1), config.embed_dim)
        layer_dims[LAST] = config.embed_dim
        super().__init__(
            spec,
            layer_dims=layer_dims,
            checkpoint=checkpoint,
            checkpoint_sha256=checkpoint_sha256,
            random_init=random_init,
            device=device,
            compute_dtype=compute_dtype,
        )
        self.model = vit
        self.config = config
        self.pooling = pooling
        self.frames_per_batch = frames_per_batch
        self.unused_keys = list(unused_keys)

    def _frames(self, clip: Clip) -> np.ndarray:
        f = clip.frames
        if f is None:
            raise ClipError(f"{clip.video_id}: {self.name} needs face crops (Clip.frames)")
        if f.ndim != 4 or f.shape[-1] != 3 or f.shape[0] == 0:
            raise ClipError(
                f"{clip.video_id}: {self.name} expects RGB face crops [T, 224, 224, 3], "
                f"got {f.shape}"
            )
        return f

    def encode(
        self, clips: Sequence[Clip], layers: Sequence[Layer]
    ) -> list[dict[Layer, np.ndarray]]:
        import torch

        from featstore.encoders.base import autocast

        layers = self.resolve_layers(layers)
        frames = [self._frames(c) for c in clips]
        upto = self.config.depth if LAST in layers else max(int(k) for k in layers)
        allframes = np.concatenate(frames)  # frames are independent: no padding needed
        rows = {k: np.empty((len(allframes), self.layer_dims[k]), np.float32) for k in layers}
        step = self.frames_per_batch
        with torch.inference_mode(), autocast(self.device, self.compute_dtype):
            for start in range(0, len(allframes), step):
                pixels = face_pixels(
                    allframes[start : start + step], self.config.img_size, self.device
                )
                states = vit_hidden_states(self.model, self.config, pixels, upto=upto)
                for k in layers:
                    rows[k][start : start + len(pixels)] = (
                        self._rows(states, k).float().cpu().numpy()
                    )
        bounds = np.cumsum([0] + [len(f) for f in frames])
        return [{k: rows[k][a:b] for k in layers} for a, b in itertools.pairwise(bounds)]

    def _rows(self, states: list[torch.Tensor], layer: Layer) -> torch.Tensor:
        if layer != LAST:
            return pool_tokens(states[int(layer)], self.pooling)
        if self.config.final_norm == "norm":
            return pool_tokens(self.model.norm(states[-1]), self.pooling)
        return self.model.fc_norm(pool_tokens(states[-1], self.pooling))


def _options(spec: EncoderSpec, options: Mapping[str, Any]) -> tuple[str, int]:
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise EncoderError(f"{spec.name}: unknown options {unknown}; known: {list(OPTIONS)}")
    pooling = options.get("pooling", "mean")
    if pooling not in POOLINGS:
        raise EncoderError(f"{spec.name}: pooling must be one of {POOLINGS}, got {pooling!r}")
    per_batch = options.get("frames_per_batch", DEFAULT_FRAMES_PER_BATCH)
    if isinstance(per_batch, bool) or not isinstance(per_batch, int) or per_batch < 1:
        raise EncoderError(f"{spec.name}: frames_per_batch must be a positive int")
    return pooling, per_batch


def load_strict(vit: nn.Module, state: Mapping[str, Any], source: str) -> None:
    """Every encoder weight present, none left over, shapes equal; else :class:`CheckpointError`."""
    expected = vit.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{source} does not fit FSFM's ViT: missing {missing[:4]}, unexpected "
            f"{unexpected[:4]}, wrong shape {wrong[:4]}"
        )
    vit.load_state_dict({k: v.float() for k, v in state.items()})


def load(
    spec: EncoderSpec,
    checkpoint: str | None,
    *,
    device: str,
    dtype: str,
    random_init: bool,
    trust_checkpoint: bool = False,
    **options: Any,
) -> FSFMEncoder:
    """Loader registered as ``fsfm``. Options: ``pooling`` ("mean" | "cls"),
    ``frames_per_batch`` (default 32); ``trust_checkpoint``: full ``torch.load``."""
    from featstore.encoders.base import bert_init_, checkpoint_sha256
    from featstore.encoders.checkpoints import find_local_checkpoint, load_checkpoint
    from featstore.encoders.convert import is_converted, read_converted

    pooling, per_batch = _options(spec, options)
    if not checkpoint:
        raise CheckpointError(f"{spec.name} needs a checkpoint (an FSFM .pth file)")
    state: Mapping[str, Any] | None = None
    unused: list[str] = []
    sha = None
    try:
        path = find_local_checkpoint(checkpoint)
    except CheckpointError:
        if not (random_init and checkpoint == spec.default_checkpoint):
            raise
        config = ViTConfig()
    else:
        sha = None if random_init else checkpoint_sha256(path)
        if is_converted(path):
            converted = read_converted(path, family=FAMILY)
            config, state = ViTConfig.from_dict(converted.config), converted.state_dict
        else:
            raw = load_checkpoint(path, trust=trust_checkpoint)
            model_state = raw.get("model", raw)
            if not isinstance(model_state, Mapping):
                raise CheckpointError(f"{path}: checkpoint['model'] is not a state dict")
            state, unused = split_state_dict(model_state)
            config = infer_config(state)
            if unused:
                log.info("%s: %d pre-training/classifier keys not loaded", path, len(unused))
    vit = build_vit(config)
    if random_init:
        bert_init_(vit)
    else:
        assert state is not None
        load_strict(vit, state, str(checkpoint))
    vit.eval().to(device)
    return FSFMEncoder(
        spec,
        vit,
        config,
        pooling=pooling,
        frames_per_batch=per_batch,
        checkpoint=checkpoint,
        checkpoint_sha256=sha,
        random_init=random_init,
        device=device,
        compute_dtype=dtype,
        unused_keys=unused,
    )


def to_converted(encoder: Encoder) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(state_dict, config)`` of a loaded FSFM encoder (FSFM's own key names)."""
    if not isinstance(encoder, FSFMEncoder):
        raise EncoderError(f"{encoder.name} is not an FSFM encoder")
    return dict(encoder.model.state_dict()), asdict(encoder.config)


register(SPEC, load)
register_converter(FAMILY, to_converted)
