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
forward, default 1500), ``arch`` (``"large"``/``"base"``, random init only).
Modules: ``config`` (torch-free settings), ``model`` (the network), ``weights``
(checkpoint loading), ``encoder`` (inputs, batching, rows).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from featstore.encoders import register
from featstore.encoders.base import EncoderError, EncoderSpec
from featstore.encoders.convert import register_converter

if TYPE_CHECKING:
    import torch

    from featstore.encoders.base import Encoder

__all__ = ["AVHUBERT_A", "AVHUBERT_AV", "AVHUBERT_V", "DEFAULT_CHECKPOINT", "load", "to_converted"]

DEFAULT_CHECKPOINT = "self_large_vox_433h.pt"
FAMILY = "avhubert"
OPTIONS = ("trust_checkpoint", "max_batch_frames", "arch")

_COMMON: dict[str, Any] = dict(
    family=FAMILY,
    crop="mouth",
    frame_hz=25.0,
    dim=1024,
    n_layers=24,
    default_checkpoint=DEFAULT_CHECKPOINT,
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

    import torch

    from featstore.encoders.avhubert.encoder import DEFAULT_MAX_BATCH_FRAMES, AVHubertEncoder
    from featstore.encoders.avhubert.weights import load_avhubert

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EncoderError(f"device {device!r} requested but CUDA is not available")
    loaded = load_avhubert(
        checkpoint,
        default_checkpoint=spec.default_checkpoint,
        random_init=random_init,
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
