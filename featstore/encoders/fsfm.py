"""FSFM ViT-B/16 face features, one row per 25 fps frame (PEERS.md "FSFM").

Plain-PyTorch ViT (no timm) loading FSFM's checkpoints (``wolo-wolo/FSFM-CVPR25``),
``checkpoint['model']`` in either of two layouts (:func:`split_state_dict`), both
loaded strictly (every encoder weight present with its shape, anything else not
listed below an error); keys outside the encoder are listed in ``unused_keys``:

- ``fine-tuned`` (the default, the paper's): ``models_vit.VisionTransformer`` with
  ``global_pool`` (``fsfm-3c/models_vit.py``), as ``main_finetune_DfD.py`` saves it
  (``misc.save_model``: ``{"model", "optimizer", "epoch", "scaler", "args"}``):
  encoder keys + ``fc_norm`` (no ``norm``) + the classifier ``head`` (unused);
- ``pre-trained``: ``FSFMViT`` (``fsfm-3c/models_fsfm.py``): encoder keys + ``norm``
  + pre-training extras (``decoder*``, ``rep_decoder*``, ``projector``,
  ``predictor``, ``mask_token``; unused), or ``head`` (a ``--cls_token`` fine-tune).

Encoder keys: ``patch_embed.proj``, ``cls_token``, ``pos_embed``,
``blocks.<i>.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``. Architecture
(width, depth, heads, patch, MLP) is read from tensor shapes; heads from the width
(FSFM's ViT-S/B/L/H: 12/12/16/16; others 64 per head).

Input: ``[T, 224, 224, 3]`` RGB face crops from :mod:`featstore.crops` (resized
bicubic if another size), /255, normalised with FSFM's VGGFace2 mean/std (the
fine-tuning reuses the pre-training's ``pretrain_ds_mean_std.txt``).

Rows. Layers ``i`` = tokens after block ``i`` (0 = patch + position embeddings),
pooled (``pooling="mean"``: the mean of the patch tokens, CLS excluded, the default;
``"cls"``: the CLS token), no final norm. ``"last"`` is the frame feature of the
checkpoint's own model:

- fine-tuned: ``fc_norm(mean of the last block's patch tokens)``, exactly
  ``models_vit.forward_features`` with ``global_pool`` (``x[:, 1:].mean(1)``: the CLS
  token is excluded, then ``fc_norm``), what the classifier ``head`` reads;
- pre-trained: the mean of ``norm(tokens)`` over the patch tokens (``FSFMViT``'s
  encoder ends with ``norm``; the paper averages patch embeddings).

Default checkpoint: ``FF++_c23_32frames/checkpoint-min_val_loss.pth``, the paper's
(Supp. B) FSFM ViT-B/16 (VGGFace2 pre-training, 400 epochs) fine-tuned on
FaceForensics++ c23, 32 frames per video (Hugging Face ``Wolowolo/fsfm-3c``,
``finetuned_models/FF++_c23_32frames/checkpoint-min_val_loss.pth``). Alternative:
``VF2_ViT-B/checkpoint-400.pth``, the VGGFace2 pre-training alone
(``pretrained_models/VF2_ViT-B/checkpoint-400.pth``). Either is looked up as a local
path or under ``$FEATSTORE_CHECKPOINTS`` (keep the folder: the file names are generic).

Random init (``random_init``): the architecture with FSFM's own from-scratch
initialisation (:data:`INIT_SCHEME`, MAE's; :mod:`featstore.encoders.fsfm_init`) or,
with ``random_init_scheme="bert"``, BERT-style.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
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
from featstore.encoders.random_init import OPTION as INIT_OPTION
from featstore.encoders.random_init import InitScheme, resolve_scheme
from featstore.layout import LAST, Layer
from featstore.timebase import FRAME_HZ

if TYPE_CHECKING:
    import torch
    from torch import nn

    from featstore.spatial.base import SpatialExplainer

log = logging.getLogger(__name__)

FAMILY = "fsfm"
DEFAULT_CHECKPOINT = "FF++_c23_32frames/checkpoint-min_val_loss.pth"
PRETRAINED_CHECKPOINT = "VF2_ViT-B/checkpoint-400.pth"
"""The documented alternative: FSFM's VGGFace2 pre-training alone (layout pre-trained)."""
FINE_TUNED = "fine-tuned"
PRE_TRAINED = "pre-trained"
INIT_SCHEME = InitScheme(
    name="fsfm-mae",
    summary="FSFM's from-scratch initialisation: MAE's initialize_weights",
    source="wolo-wolo/FSFM-CVPR25 fsfm-3c/models_fsfm.py FSFMViT.initialize_weights, util/pos_embed.py",
    rules=(
        ("pos_embed", "fixed 2-D sin-cos embedding (MAE's get_2d_sincos_pos_embed), CLS row 0"),
        (
            "patch_embed.proj weight",
            "xavier_uniform on its [D, 3 * p * p] view (as a Linear): U(±sqrt(6 / (D + 3 * p * p)))",
        ),
        ("patch_embed.proj bias", "PyTorch default: U(±1/sqrt(3 * p * p))"),
        ("cls_token", "N(0, 0.02)"),
        ("Linear (attn.qkv, attn.proj, mlp.fc1, mlp.fc2)", "xavier_uniform, bias 0"),
        ("LayerNorm (norm1, norm2, norm / fc_norm)", "weight 1, bias 0"),
    ),
)
SPEC = EncoderSpec(
    name="fsfm",
    family=FAMILY,
    modality="visual",
    crop="face",
    frame_hz=FRAME_HZ,
    dim=768,
    n_layers=12,
    default_checkpoint=DEFAULT_CHECKPOINT,
    description=(
        "FSFM ViT-B/16 fine-tuned on FF++ c23 (FF++_c23_32frames, the paper's): fc_norm of "
        f"the mean patch token per face crop; alternative {PRETRAINED_CHECKPOINT} (VGGFace2 "
        "pre-training: mean of the normed patch tokens)"
    ),
    init_scheme=INIT_SCHEME,
    recorded_options=("pooling",),
)
# VGGFace2 face statistics as FSFM publishes them (FSFM-CVPR25 fsfm-3c/util/datasets.py,
# the fallback when no pretrain_ds_mean_std.txt is found; fsfm-3c/pretrain/main_pretrain.py)
MEAN = (0.5482207536697388, 0.42340534925460815, 0.3654651641845703)
STD = (0.2789176106452942, 0.2438540756702423, 0.23493893444538116)
LAYER_NORM_EPS = 1e-6
FSFM_HEADS = {384: 12, 768: 12, 1024: 16, 1280: 16}
"""Heads by width in FSFM's ViT-S/B/L/H (its ViT-S has 12 heads of 32, not timm's 6)."""
POOLINGS = ("mean", "cls")
OPTIONS = ("pooling", "frames_per_batch", INIT_OPTION)
DEFAULT_FRAMES_PER_BATCH = 32
PRETRAINING_PREFIXES = ("decoder", "rep_decoder", "projector.", "predictor.", "mask_token")
HEAD_PREFIX = "head."
UNUSED_PREFIXES = {
    FINE_TUNED: (HEAD_PREFIX,),  # models_vit: the classifier
    PRE_TRAINED: (*PRETRAINING_PREFIXES, HEAD_PREFIX),  # FSFMViT's heads; a --cls_token fine-tune
}
"""Keys outside the encoder each layout may hold (listed as unused, never loaded)."""


@dataclass(frozen=True)
class ViTConfig:
    """A ViT encoder; the default is the paper's fine-tuned FSFM ViT-B/16
    (``vit_base_patch16`` with ``global_pool`` in FSFM-CVPR25 ``fsfm-3c/models_vit.py``,
    the encoder of ``fsfm_vit_base_patch16`` in ``models_fsfm.py``: patch 16, width 768,
    depth 12, 12 heads, MLP ratio 4, LayerNorm eps 1e-6, 224 px input, ``fc_norm``)."""

    img_size: int = 224
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    final_norm: str = "fc_norm"  # "fc_norm" (fine-tuned, global pool) | "norm" (pre-trained)

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


def checkpoint_layout(state: Mapping[str, Any]) -> str:
    """``fine-tuned`` (``fc_norm``, models_vit with global pool) or ``pre-trained`` (FSFMViT)."""
    return FINE_TUNED if any(k.startswith("fc_norm.") for k in state) else PRE_TRAINED


def split_state_dict(state: Mapping[str, Any]) -> tuple[dict[str, Any], list[str], str]:
    """(encoder candidates, the keys outside the encoder its layout holds, the layout).

    Anything else left in the candidates (``norm`` beside ``fc_norm``, a stray key) is
    caught by :func:`load_strict`.
    """
    layout = checkpoint_layout(state)
    unused = sorted(k for k in state if k.startswith(UNUSED_PREFIXES[layout]))
    skip = set(unused)
    return {k: v for k, v in state.items() if k not in skip}, unused, layout


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
        random_init_scheme: InitScheme | None = None,
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
            random_init_scheme=random_init_scheme,
        )
        self.model = vit
        self.config = config
        self.pooling = pooling
        self.frames_per_batch = frames_per_batch
        self.unused_keys = list(unused_keys)

    @property
    def layout(self) -> str:
        """``fine-tuned`` (``fc_norm``) or ``pre-trained`` (``norm``): what ``last`` means."""
        return FINE_TUNED if self.config.final_norm == "fc_norm" else PRE_TRAINED

    def info_extra(self) -> dict[str, Any]:
        return {"fsfm_layout": self.layout, "pooling": self.pooling}

    def spatial(self, layer: Layer) -> SpatialExplainer:
        """Exact patch contributions (mean pooling) or Grad-CAM (CLS pooling):
        :mod:`featstore.encoders.fsfm_spatial`."""
        from featstore.encoders.fsfm_spatial import explainer

        return explainer(self, self.resolve_layers([layer])[0])

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
    """Every encoder weight present with its shape and nothing else; else
    :class:`CheckpointError` naming what is missing, unexpected or mis-shaped."""
    expected = vit.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k].shape)})"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", wrong)):
        if keys:
            more = f" (+{len(keys) - 4} more)" if len(keys) > 4 else ""
            problems.append(f"{len(keys)} {label}: {', '.join(keys[:4])}{more}")
    if problems:
        raise CheckpointError(f"{source} does not fit FSFM's ViT: " + "; ".join(problems))
    vit.load_state_dict({k: v.float() for k, v in state.items()})


def read_checkpoint(path: Path, *, trust: bool) -> tuple[ViTConfig, Mapping[str, Any], list[str]]:
    """(architecture, encoder weights, unused keys) of an FSFM file or converted directory."""
    from featstore.encoders.checkpoints import load_checkpoint
    from featstore.encoders.convert import is_converted, read_converted

    if is_converted(path):
        converted = read_converted(path, family=FAMILY)
        unused = [str(k) for k in converted.extra.get("unused_keys", [])]
        return ViTConfig.from_dict(converted.config), converted.state_dict, unused
    raw = load_checkpoint(path, trust=trust)
    model_state = raw.get("model", raw)
    if not isinstance(model_state, Mapping):
        raise CheckpointError(f"{path}: checkpoint['model'] is not a state dict")
    state, unused, layout = split_state_dict(model_state)
    config = infer_config(state)
    if unused:
        shown = ", ".join(unused[:6]) + (f" (+{len(unused) - 6} more)" if len(unused) > 6 else "")
        log.info(
            "%s (%s): %d keys outside the encoder not loaded: %s", path, layout, len(unused), shown
        )
    return config, state, unused


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
    ``frames_per_batch`` (default 32), ``random_init_scheme`` ("native": FSFM's MAE
    initialisation, or "bert"); ``trust_checkpoint``: full ``torch.load``."""
    from featstore.encoders.base import checkpoint_sha256
    from featstore.encoders.checkpoints import find_local_checkpoint
    from featstore.encoders.fsfm_init import init_random_
    from featstore.encoders.random_init import seeded

    pooling, per_batch = _options(spec, options)
    scheme = resolve_scheme(spec, options, random_init=random_init)
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
        config = ViTConfig()  # the default checkpoint's architecture
    else:
        config, state, unused = read_checkpoint(path, trust=trust_checkpoint)
        sha = None if random_init else checkpoint_sha256(path)
    if scheme is not None:
        with seeded():  # the constructor's defaults are part of the scheme
            vit = build_vit(config)
            init_random_(vit, config, scheme)
        unused = []
    else:
        assert state is not None  # no file is an error unless random_init
        vit = build_vit(config)
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
        random_init_scheme=scheme,
    )


def to_converted(encoder: Encoder) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(state_dict, config)`` of a loaded FSFM encoder (FSFM's own key names)."""
    if not isinstance(encoder, FSFMEncoder):
        raise EncoderError(f"{encoder.name} is not an FSFM encoder")
    return dict(encoder.model.state_dict()), asdict(encoder.config)


register(SPEC, load)
register_converter(FAMILY, to_converted)
