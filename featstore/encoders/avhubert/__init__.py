"""AV-HuBERT (facebookresearch/av_hubert) in plain PyTorch: ``avhubert-a``, ``-v``, ``-av``.

The paper's audio-visual encoder (PEERS.md "AV-HuBERT"), loaded straight from its
fairseq checkpoints without fairseq: large (24 layers, 1024 wide) and base (12, 768),
pre-trained (``large_vox_iter5.pt``) or fine-tuned (``self_large_vox_433h.pt``, the
default, as AVH-Align uses). One model, three encoders:

- ``avhubert-a``: audio only (zeros in place of the video front end's output);
- ``avhubert-v``: mouth crops only (zeros in place of the audio front end's output);
- ``avhubert-av``: both, trimmed to the shorter.

Where the checkpoint goes: download ``self_large_vox_433h.pt`` from the AV-HuBERT
model zoo and either pass its path (``--checkpoint PATH``) or put it in the checkpoint
directory ``$FEATSTORE_CHECKPOINTS`` (default ``~/.cache/featstore/checkpoints``),
where the default name resolves. Loading unpickles it with the restricted loader of
:mod:`featstore.encoders.checkpoints` (``trust_checkpoint=True`` for full pickle);
``featstore encoders convert avhubert-av --checkpoint PATH --out DIR`` writes a
safetensors directory that loads without unpickling.

Loader options: ``trust_checkpoint`` (bool), ``max_batch_frames`` (padded frames per
forward, default 1500), ``arch`` (``"large"``/``"base"``, random init only),
``random_init_scheme`` (``"native"``: :data:`INIT_SCHEME`, AV-HuBERT's own from-scratch
initialisation; ``"bert"``: :data:`~featstore.encoders.random_init.BERT`).
Modules: ``config`` (torch-free settings), ``model`` (the network), ``weights``
(checkpoint loading), ``init`` (random initialisation), ``encoder`` (inputs, batching,
rows).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from featstore.encoders import register
from featstore.encoders.base import EncoderError, EncoderSpec
from featstore.encoders.convert import register_converter
from featstore.encoders.random_init import OPTION as INIT_OPTION
from featstore.encoders.random_init import InitScheme, resolve_scheme
from featstore.timebase import FRAME_HZ

if TYPE_CHECKING:
    import torch

    from featstore.encoders.base import Encoder

__all__ = [
    "AVHUBERT_A",
    "AVHUBERT_AV",
    "AVHUBERT_V",
    "DEFAULT_CHECKPOINT",
    "INIT_SCHEME",
    "load",
    "to_converted",
]

DEFAULT_CHECKPOINT = "self_large_vox_433h.pt"
FAMILY = "avhubert"
OPTIONS = ("trust_checkpoint", "max_batch_frames", "arch", INIT_OPTION)

INIT_SCHEME = InitScheme(
    name="avhubert-fairseq",
    summary=(
        "AV-HuBERT's from-scratch initialisation: what AVHubertModel(cfg) builds "
        "(fairseq init_bert_params on the transformer encoder, He-normal ResNet trunk)"
    ),
    source=(
        "facebookresearch/av_hubert avhubert/hubert.py, avhubert/resnet.py; fairseq "
        "(commit afc77bd) wav2vec2.py TransformerEncoder, init_bert_params"
    ),
    rules=(
        ("3-D stem Conv3d (no bias)", "PyTorch default: U(±1/sqrt(fan_in)), fan_in = 5*7*7"),
        ("ResNet trunk Conv2d (incl. 1x1 downsample)", "N(0, sqrt(2 / (k * k * out_channels)))"),
        ("BatchNorm3d/2d", "weight 1, bias 0 (running mean 0, var 1)"),
        ("PReLU", "slopes 0.25"),
        (
            "front-end projections (audio 104->D, video 512->D), post_extract_proj (2D->D)",
            "PyTorch default Linear: weight and bias U(±1/sqrt(fan_in)) (init_bert_params "
            "does not reach them, though the paper's Supp. D says Linear layers are BERT-style)",
        ),
        ("encoder Linear (q/k/v/out_proj, fc1, fc2)", "N(0, 0.02), bias 0 (init_bert_params)"),
        (
            "positional conv (weight norm over dim 2)",
            "v ~ N(0, sqrt(4 / (k * D))), g = ||v|| (effective weight = v), bias 0",
        ),
        ("LayerNorm (fusion, encoder)", "weight 1, bias 0"),
    ),
)

_COMMON: dict[str, Any] = dict(
    family=FAMILY,
    crop="mouth",
    frame_hz=FRAME_HZ,
    dim=1024,
    n_layers=24,
    default_checkpoint=DEFAULT_CHECKPOINT,
    init_scheme=INIT_SCHEME,
)
AVHUBERT_A = EncoderSpec(
    name="avhubert-a",
    modality="audio",
    description="AV-HuBERT large, audio only (log filterbank input, video features zeroed)",
    **_COMMON,
)
AVHUBERT_V = EncoderSpec(
    name="avhubert-v",
    modality="visual",
    description="AV-HuBERT large, mouth crops only (88x88 grey, audio features zeroed)",
    **_COMMON,
)
AVHUBERT_AV = EncoderSpec(
    name="avhubert-av",
    modality="audiovisual",
    description="AV-HuBERT large, audio and mouth crops fused (trimmed to the shorter)",
    **_COMMON,
)


def load(
    spec: EncoderSpec,
    checkpoint: str | None,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    random_init: bool = False,
    **options: Any,
) -> Encoder:
    """The registry's loader for the three AV-HuBERT encoders (see the module docstring)."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise EncoderError(
            f"encoder {spec.name} has no options {', '.join(unknown)}; options: {', '.join(OPTIONS)}"
        )
    max_batch_frames = options.get("max_batch_frames")
    if max_batch_frames is not None and (
        isinstance(max_batch_frames, bool)
        or not isinstance(max_batch_frames, int)
        or max_batch_frames < 1
    ):
        raise EncoderError(f"max_batch_frames must be a positive integer, got {max_batch_frames!r}")
    scheme = resolve_scheme(spec, options, random_init=random_init)

    import torch

    from featstore.encoders.avhubert.encoder import DEFAULT_MAX_BATCH_FRAMES, AVHubertEncoder
    from featstore.encoders.avhubert.weights import load_avhubert

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EncoderError(f"device {device!r} requested but CUDA is not available")
    loaded = load_avhubert(
        checkpoint,
        default_checkpoint=spec.default_checkpoint,
        init_scheme=scheme,
        trust=bool(options.get("trust_checkpoint", False)),
        arch=options.get("arch"),
    )
    return AVHubertEncoder(
        spec,
        loaded,
        device=str(dev),
        compute_dtype=dtype,
        random_init=random_init,
        max_batch_frames=max_batch_frames or DEFAULT_MAX_BATCH_FRAMES,
    )


def to_converted(encoder: Encoder) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights (fairseq key names, no fine-tuning prefix) and config of a loaded encoder."""
    from featstore.encoders.avhubert.encoder import AVHubertEncoder

    if not isinstance(encoder, AVHubertEncoder):
        raise EncoderError(f"{encoder.name} is not an AV-HuBERT encoder")
    if encoder.random_init:
        raise EncoderError("a random-init encoder has no checkpoint to convert")
    state = {k: v.detach().cpu() for k, v in encoder.model.state_dict().items()}
    return state, {**encoder.config.to_dict(), "finetuned": encoder.finetuned}


for _spec in (AVHUBERT_A, AVHUBERT_V, AVHUBERT_AV):
    register(_spec, load)
register_converter(FAMILY, to_converted)
