"""Tiny random Hugging Face checkpoints for tests and demos only (no downloads).

:func:`save_tiny_checkpoint` writes a checkpoint directory laid out like the
family's real default checkpoint (``config.json``, ``model.safetensors`` of the
pre-training or full model, ``preprocessor_config.json``) through
``save_pretrained``, so loading it exercises the same path as a real checkpoint.
The models are 2 layers, 32 wide, with random weights: their features mean
nothing. They exist so that the test suite and ``make demo`` run offline in
seconds.

>>> path = save_tiny_checkpoint("wav2vec2", tmp / "w2v")  # doctest: +SKIP
>>> enc = load_encoder("wav2vec2", str(path))  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from featstore.encoders.base import EncoderError
from featstore.encoders.hf import quiet_transformers
from featstore.timebase import SAMPLE_RATE_HZ

TINY_FAMILIES = ("wav2vec2", "clip", "videomae")
VARIANTS = {
    # "layer": XLS-R-like (layer-norm conv encoder, stable layer norm, padded batches);
    # "group": wav2vec2-base-like (group norm over time in the first conv: no padding)
    "wav2vec2": ("layer", "group"),
    "clip": ("default",),
    "videomae": ("default",),
}
_WIDTH = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}


def save_tiny_checkpoint(
    name: str,
    directory: Path,
    *,
    seed: int = 0,
    variant: str | None = None,
    weights: bool = True,
) -> Path:
    """Write a tiny random checkpoint of family ``name`` into ``directory``; return it.

    ``variant``: wav2vec2 ``"layer"`` (default) or ``"group"`` (see :data:`VARIANTS`).
    ``weights=False`` writes only the configs (for config-only random init).
    For tests and demos only.
    """
    import torch

    if name not in VARIANTS:
        raise EncoderError(f"no tiny checkpoint for {name!r}; known: {', '.join(TINY_FAMILIES)}")
    variant = variant or VARIANTS[name][0]
    if variant not in VARIANTS[name]:
        raise EncoderError(f"tiny {name}: variant must be one of {VARIANTS[name]}, got {variant!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model, processor = {"wav2vec2": _wav2vec2, "clip": _clip, "videomae": _videomae}[name](variant)
    with quiet_transformers():
        if weights:
            model.save_pretrained(directory)
        else:
            model.config.save_pretrained(directory)
        processor.save_pretrained(directory)
    return directory


def _wav2vec2(variant: str) -> tuple[Any, Any]:
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForPreTraining

    layer = variant == "layer"
    config = Wav2Vec2Config(
        **_WIDTH,
        # the real kernels and strides (320 samples per 50 Hz frame), narrow channels
        conv_dim=(16,) * 7,
        conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        conv_stride=(5, 2, 2, 2, 2, 2, 2),
        conv_bias=layer,
        feat_extract_norm="layer" if layer else "group",
        do_stable_layer_norm=layer,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        num_codevector_groups=2,
        num_codevectors_per_group=8,
        codevector_dim=16,
        proj_codevector_dim=16,
        vocab_size=32,
    )
    extractor = Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=SAMPLE_RATE_HZ,
        padding_value=0.0,
        do_normalize=True,
        return_attention_mask=layer,
    )
    return Wav2Vec2ForPreTraining(config).eval(), extractor


def _clip(variant: str) -> tuple[Any, Any]:
    from transformers import CLIPConfig, CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    config = CLIPConfig(
        text_config={
            **_WIDTH,
            "vocab_size": 99,
            "max_position_embeddings": 16,
            **{"pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2},
        },
        vision_config={**_WIDTH, "image_size": 224, "patch_size": 32},
        projection_dim=16,
    )
    # a full CLIPModel like openai/clip-vit-large-patch14; the encoder loads its vision half
    return CLIPModel(config).eval(), CLIPImageProcessorPil()


def _videomae(variant: str) -> tuple[Any, Any]:
    from transformers import VideoMAEConfig, VideoMAEForPreTraining
    from transformers.models.videomae.image_processing_pil_videomae import (
        VideoMAEImageProcessorPil,
    )

    from featstore.encoders.videomae import IMAGENET_MEAN, IMAGENET_STD

    config = VideoMAEConfig(
        **_WIDTH,
        image_size=224,
        patch_size=32,
        num_frames=16,
        tubelet_size=2,
        use_mean_pooling=False,
        norm_pix_loss=True,
        decoder_hidden_size=32,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=64,
    )
    processor = VideoMAEImageProcessorPil(
        image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD)
    )
    return VideoMAEForPreTraining(config).eval(), processor
