"""Loading AV-HuBERT weights: fairseq checkpoints (pre-trained or fine-tuned) and converted dirs.

A fairseq checkpoint is a pickled dict with ``model`` (the state dict) and ``cfg``
(hydra-era fairseq) or ``args`` (older fairseq). Pre-trained checkpoints
(``large_vox_iter5.pt``) hold ``AVHubertModel``'s keys at the top level plus
pre-training heads; fine-tuned ones (``self_large_vox_433h.pt``, ``AVHubertSeq2Seq``)
prefix the encoder's keys with ``encoder.w2v_model.`` and add ``decoder.*``.

Strict: every key the encoder has must be in the checkpoint with the same shape
(:class:`CheckpointError` names what is missing or mis-shaped; BatchNorm's
``num_batches_tracked`` counters, unused in eval, may be absent). Keys outside the
encoder (``decoder.*``, ``mask_emb``, ``final_proj.*``, ``label_embs_concat``, ...)
are logged and kept in :attr:`LoadedAVHubert.unused_keys`; a key that looks like an
encoder key but has no place in the model means the architecture was misread and is
an error. fp16 tensors (``common.fp16`` training) are upcast to float32.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from featstore.encoders.avhubert.config import (
    BASE,
    LARGE,
    AVHubertConfig,
    config_from_checkpoint,
)
from featstore.encoders.avhubert.model import AVHubertModel
from featstore.encoders.base import CheckpointError, checkpoint_sha256
from featstore.encoders.checkpoints import find_local_checkpoint, load_checkpoint, plain
from featstore.encoders.convert import is_converted, read_converted
from featstore.encoders.random_init import InitScheme, seeded

log = logging.getLogger(__name__)

__all__ = ["FAMILY", "FINETUNED_PREFIX", "LoadedAVHubert", "load_avhubert", "split_state_dict"]

FAMILY = "avhubert"
FINETUNED_PREFIX = "encoder.w2v_model."
ENCODER_PREFIXES = (
    "feature_extractor_audio.",
    "feature_extractor_video.",
    "layer_norm.",
    "post_extract_proj.",
    "encoder.",
)
ARCHES = {"large": LARGE, "base": BASE}


@dataclass
class LoadedAVHubert:
    """A model ready for inference and where it came from."""

    model: AVHubertModel
    config: AVHubertConfig
    checkpoint: str | None
    sha256: str | None
    finetuned: bool = False
    unused_keys: list[str] = field(default_factory=list)
    init_scheme: InitScheme | None = None  # the random init applied (None: trained weights)


def split_state_dict(
    state: Mapping[str, Any],
) -> tuple[dict[str, torch.Tensor], list[str], bool]:
    """fairseq ``model`` dict -> (encoder candidates without prefix, other keys, fine-tuned?)."""
    finetuned = any(k.startswith(FINETUNED_PREFIX) for k in state)
    ours: dict[str, torch.Tensor] = {}
    others: list[str] = []
    for key, value in state.items():
        if finetuned and not key.startswith(FINETUNED_PREFIX):
            others.append(key)  # decoder.*, ...
            continue
        name = key[len(FINETUNED_PREFIX) :] if finetuned else key
        if not isinstance(value, torch.Tensor):
            others.append(key)
            continue
        ours[name] = value
    return ours, others, finetuned


def _assign(model: AVHubertModel, weights: Mapping[str, torch.Tensor], source: str) -> list[str]:
    """Copy ``weights`` into ``model`` strictly; return the keys the model has no place for."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in weights and not k.endswith("num_batches_tracked")]
    if missing:
        shown = ", ".join(missing[:8]) + (
            f" (+{len(missing) - 8} more)" if len(missing) > 8 else ""
        )
        raise CheckpointError(f"checkpoint {source} lacks AV-HuBERT weights: {shown}")
    bad = [
        f"{k} {tuple(weights[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if k in weights and tuple(weights[k].shape) != tuple(v.shape)
    ]
    if bad:
        raise CheckpointError(f"checkpoint {source} has mis-shaped weights: {'; '.join(bad[:8])}")
    stray = [k for k in weights if k not in expected and k.startswith(ENCODER_PREFIXES)]
    if stray:
        raise CheckpointError(
            f"checkpoint {source} has encoder weights this architecture does not use "
            f"({', '.join(stray[:8])}): its config was misread or is unsupported"
        )
    with torch.no_grad():
        for key, target in expected.items():
            if key in weights:
                value = weights[key]
                target.copy_(value.to(target.dtype) if value.is_floating_point() else value)
    return [k for k in weights if k not in expected]


def _checkpoint_config(ckpt: Mapping[str, Any], source: str) -> Any:
    cfg = ckpt.get("cfg")
    if cfg is None:
        cfg = ckpt.get("args")
    if cfg is None:
        raise CheckpointError(
            f"checkpoint {source} has neither 'cfg' nor 'args': not a fairseq AV-HuBERT checkpoint"
        )
    cfg = plain(cfg)
    if not isinstance(cfg, Mapping):
        raise CheckpointError(f"checkpoint {source}: cannot read its config ({type(cfg).__name__})")
    return cfg


def _read(
    path: Path, *, trust: bool
) -> tuple[AVHubertConfig, dict[str, torch.Tensor], list[str], bool, str | None]:
    """(config, encoder weights, other keys, fine-tuned?, source sha256 or None) of a file or dir."""
    if is_converted(path):
        conv = read_converted(path, family=FAMILY)
        config = AVHubertConfig.from_dict(conv.config)
        unused = [str(k) for k in conv.extra.get("unused_keys", [])]
        finetuned = bool(conv.config.get("finetuned", False))
        return config, dict(conv.state_dict), unused, finetuned, conv.source_sha256
    if path.is_dir():
        raise CheckpointError(
            f"{path} is a directory but not a converted AV-HuBERT checkpoint; pass the fairseq "
            "file (e.g. self_large_vox_433h.pt) or a directory from `featstore encoders convert`"
        )
    ckpt = load_checkpoint(path, trust=trust)
    state = ckpt.get("model")
    if not isinstance(state, Mapping):
        raise CheckpointError(f"checkpoint {path} has no 'model' state dict")
    weights, others, finetuned = split_state_dict(state)
    shapes = {k: tuple(v.shape) for k, v in weights.items()}
    config = config_from_checkpoint(_checkpoint_config(ckpt, str(path)), shapes=shapes)
    return config, weights, others, finetuned, None


def load_avhubert(
    checkpoint: str | None,
    *,
    default_checkpoint: str | None,
    init_scheme: InitScheme | None = None,
    trust: bool = False,
    arch: str | None = None,
) -> LoadedAVHubert:
    """Build the model from a fairseq file or a converted dir (or a built-in arch for random init).

    ``init_scheme`` (random init): the checkpoint's architecture initialised with that
    scheme (its weights are not used); when the checkpoint is the default one and not
    here, or ``arch`` ("large"/"base") is given, the built-in architecture.
    """
    random_init = init_scheme is not None
    if arch is not None and arch not in ARCHES:
        raise CheckpointError(f"arch must be one of {sorted(ARCHES)}, got {arch!r}")
    if arch is not None and not random_init:
        raise CheckpointError("arch is only for random_init; a checkpoint decides its architecture")
    if init_scheme is not None and (arch is not None or checkpoint is None):
        return _random(ARCHES[arch or "large"], None, init_scheme)
    if not checkpoint:
        raise CheckpointError("AV-HuBERT needs a checkpoint (a fairseq .pt file or converted dir)")
    try:
        path = find_local_checkpoint(checkpoint)
    except CheckpointError:
        if init_scheme is not None and checkpoint == default_checkpoint:
            log.info("%s not found: random init of the built-in large architecture", checkpoint)
            return _random(LARGE, None, init_scheme)
        raise
    config, weights, others, finetuned, source_sha = _read(path, trust=trust)
    if init_scheme is not None:
        return _random(config, str(path), init_scheme)
    model = AVHubertModel(config)
    unused = sorted(set(others) | set(_assign(model, weights, str(path))))
    if unused:
        head = ", ".join(unused[:6]) + (f" (+{len(unused) - 6} more)" if len(unused) > 6 else "")
        log.info("%s: %d keys not used by the encoder: %s", path, len(unused), head)
    model.eval()
    return LoadedAVHubert(
        model=model,
        config=config,
        checkpoint=str(path),
        sha256=source_sha or checkpoint_sha256(path),
        finetuned=finetuned,
        unused_keys=unused,
    )


def _random(config: AVHubertConfig, checkpoint: str | None, scheme: InitScheme) -> LoadedAVHubert:
    from featstore.encoders.avhubert.init import init_random_

    with seeded():  # the constructors' defaults are part of the scheme: same on every worker
        model = AVHubertModel(config)
        init_random_(model, scheme)
    model.eval()
    return LoadedAVHubert(
        model=model, config=config, checkpoint=checkpoint, sha256=None, init_scheme=scheme
    )
