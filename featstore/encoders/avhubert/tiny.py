"""Tiny random AV-HuBERT checkpoints in fairseq's own format, for tests and demos only.

:func:`save_tiny_checkpoint` writes what ``fairseq``'s ``checkpoint_utils`` writes for
an AV-HuBERT model: ``{"cfg": {"model": {...}, "task": {...}, ...}, "model":
state_dict, "args": None, ...}``, with fairseq's key names, the pre-training heads
(``mask_emb``, ``final_proj``, ``label_embs_concat``) or, with ``finetuned=True``, the
``encoder.w2v_model.`` prefix and ``decoder.*`` keys of ``AVHubertSeq2Seq``. The
model is 2 layers, 32 wide, with a narrow ResNet trunk: its features mean nothing.

>>> path = save_tiny_checkpoint(tmp / "avh.pt")  # doctest: +SKIP
>>> enc = load_encoder("avhubert-av", str(path))  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from featstore.encoders.avhubert.config import AVHubertConfig

__all__ = ["TINY", "fairseq_state_dict", "save_tiny_checkpoint", "tiny_model_cfg"]

TINY = AVHubertConfig(
    encoder_layers=2,
    encoder_embed_dim=32,
    encoder_ffn_embed_dim=64,
    encoder_attention_heads=2,
    layer_norm_first=True,
    conv_pos=8,
    conv_pos_groups=4,
    frontend_channels=8,
    resnet_planes=(8, 8, 16, 16),
)


def tiny_model_cfg(config: AVHubertConfig = TINY) -> dict[str, Any]:
    """``cfg['model']`` as a training yaml sets it (only some keys; the rest are defaults)."""
    return {
        "_name": "av_hubert",
        "label_rate": 25,
        "encoder_layers": config.encoder_layers,
        "encoder_embed_dim": config.encoder_embed_dim,
        "encoder_ffn_embed_dim": config.encoder_ffn_embed_dim,
        "encoder_attention_heads": config.encoder_attention_heads,
        "layer_norm_first": config.layer_norm_first,
        "conv_pos": config.conv_pos,
        "conv_pos_groups": config.conv_pos_groups,
        "audio_feat_dim": config.audio_feat_dim,
        "modality_fuse": config.modality_fuse,
        "final_dim": 16,
        "untie_final_proj": True,
        "dropout": 0.1,
        "encoder_layerdrop": 0.05,
        "masking_type": "input",
    }


def fairseq_state_dict(
    config: AVHubertConfig = TINY, *, seed: int = 0, finetuned: bool = False
) -> dict[str, Any]:
    """A random state dict with fairseq's keys (and its extras) for ``config``."""
    import torch

    from featstore.encoders.avhubert.model import AVHubertModel

    gen = torch.Generator().manual_seed(seed)
    model = AVHubertModel(config)
    state: dict[str, Any] = {}
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(100)
        elif key.endswith("running_var") or key.endswith("weight_g"):
            state[key] = 0.5 + torch.rand(value.shape, generator=gen)
        else:
            state[key] = 0.1 * torch.randn(value.shape, generator=gen)
    d = config.encoder_embed_dim
    if not finetuned:
        state["mask_emb"] = torch.rand(config.audio_feat_dim, generator=gen)
        state["final_proj.weight"] = torch.randn(16 * 2, d, generator=gen)
        state["final_proj.bias"] = torch.zeros(16 * 2)
        state["label_embs_concat"] = torch.rand(12, 16, generator=gen)
        return state
    out = {f"encoder.w2v_model.{k}": v for k, v in state.items()}
    out["decoder.embed_tokens.weight"] = torch.randn(20, d, generator=gen)
    out["decoder.layers.0.fc1.weight"] = torch.randn(64, d, generator=gen)
    out["decoder.layer_norm.weight"] = torch.ones(d)
    out["decoder.embed_out"] = torch.randn(20, d, generator=gen)
    return out


def save_tiny_checkpoint(
    path: str | Path,
    *,
    config: AVHubertConfig = TINY,
    seed: int = 0,
    finetuned: bool = False,
    fp16: bool = False,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a random fairseq-format AV-HuBERT checkpoint to ``path``; return it.

    ``fp16``: floating tensors stored as float16 (``common.fp16: true`` training).
    ``extra``: more top-level entries (e.g. a pickled ``argparse.Namespace`` as ``args``).
    """
    import torch

    state = fairseq_state_dict(config, seed=seed, finetuned=finetuned)
    if fp16:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    model_cfg = tiny_model_cfg(config)
    task = {"_name": "av_hubert_pretraining", "input_modality": "video", "stack_order_audio": 4}
    if finetuned:
        cfg = {
            "model": {
                "_name": "av_hubert_seq2seq",
                "w2v_path": "/checkpoint/pretrained.pt",
                "decoder_layers": 1,
                "decoder_embed_dim": config.encoder_embed_dim,
                "w2v_args": {"model": model_cfg, "task": task, "common": {"fp16": fp16}},
            },
            "task": task,
        }
    else:
        cfg = {"model": model_cfg, "task": task, "common": {"fp16": fp16}}
    ckpt: dict[str, Any] = {
        "args": None,
        "cfg": cfg,
        "model": state,
        "optimizer_history": [{"criterion_name": "AVHubertCriterion", "num_updates": 10}],
        "extra_state": {"epoch": 1, "train_iterator": {"epoch": 1, "iterations_in_epoch": 0}},
        "last_optimizer_state": None,
    }
    ckpt.update(extra or {})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path
