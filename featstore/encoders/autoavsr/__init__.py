"""Auto-AVSR encoders: ``autoavsr-asr`` (audio), ``-vsr`` (mouth), ``-avsr`` (both).

Plain-PyTorch re-implementation of the encoders of Ma et al.'s Auto-AVSR
(``mpc001/auto_avsr``, PEERS.md "Auto-AVSR"), loading its bare ``.pth`` state
dicts in the current and the legacy layout (:mod:`.config`). No espnet.

- Video: ``[T, 96, 96]`` grey mouth ROIs -> 88x88 centre crop, /255,
  (x - 0.421) / 0.165 -> 3-D conv + ResNet-18 (swish) -> ``[T, 512]``.
- Audio: the raw 16 kHz waveform, layer-normalised over the whole clip (eps 1e-8)
  -> 1-D ResNet-18 (swish), 640 samples per row -> ``[S // 640, 512]``. For the
  audio-visual model the waveform is first cut or zero-padded to ``T * 640``
  samples (Auto-AVSR's ``cut_or_pad``), so both streams have ``T`` rows.
- Linear(512 -> 768) -> relative-position Conformer (12 blocks) -> ``after_norm``.

Layers (25 Hz): ``0`` = the Conformer's input, i.e. the projected front-end output
scaled by ``sqrt(768)`` exactly as block 1 receives it (relative positions add
nothing to it); ``i`` = output of block ``i`` (no final norm); ``"last"`` = the
encoder output after ``after_norm``, which is what Auto-AVSR's CTC and decoder read.
For ``autoavsr-avsr`` the numbered layers concatenate the video and audio
encoders' states (video first, 1536-d) and ``"last"`` is the fusion MLP's output
(768-d), the audio-visual model's encoder output.

Default checkpoints are local files (the published LRS3 models, downloaded by
the user from the Auto-AVSR model zoo): ``LRS3_A_WER1.0.pth``,
``LRS3_V_WER19.1.pth``, ``LRS3_AV_WER0.9.pth``, looked up as given, then in the
checkpoint directory ``$FEATSTORE_CHECKPOINTS`` (default
``~/.cache/featstore/checkpoints``); pass ``checkpoint=`` to point elsewhere. They
are read with the restricted unpickler (no code runs) or, once converted with
``featstore encoders convert``, from safetensors. Strict: every encoder weight must
be present and used; the decoder and CTC heads are listed in ``unused_keys``. With
``random_init`` and no such file, the published architecture is built with random
weights: Auto-AVSR's own initialisation (:data:`INIT_SCHEME`) or, with option
``random_init_scheme="bert"``, BERT-style.

>>> enc = load_encoder("autoavsr-vsr", "~/models/LRS3_V_WER19.1.pth")  # doctest: +SKIP
>>> enc.encode([Clip("v", frames=mouth)], ["last"])[0]["last"].shape  # doctest: +SKIP
(250, 768)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from featstore.encoders import register
from featstore.encoders.base import CheckpointError, Encoder, EncoderError, EncoderSpec
from featstore.encoders.convert import register_converter
from featstore.encoders.random_init import OPTION as INIT_OPTION
from featstore.encoders.random_init import InitScheme, resolve_scheme
from featstore.timebase import FRAME_HZ

if TYPE_CHECKING:
    from featstore.encoders.autoavsr.encoder import AutoAVSREncoder

FAMILY = "autoavsr"
INIT_SCHEME = InitScheme(
    name="autoavsr-pytorch",
    summary=(
        "Auto-AVSR's construction: PyTorch's defaults (its E2E model and espnet modules "
        "apply no initialisation of their own) and xavier-uniform attention position biases"
    ),
    source=(
        "mpc001/auto_avsr espnet/nets/pytorch_backend/e2e_asr_conformer.py (E2E), "
        "transformer/attention.py (RelPositionMultiHeadedAttention)"
    ),
    rules=(
        (
            "Conv1d/2d/3d (ResNet front ends, conformer conv module), Linear",
            "PyTorch default: weight and bias U(±1/sqrt(fan_in))",
        ),
        ("BatchNorm, LayerNorm", "weight 1, bias 0 (running mean 0, var 1)"),
        ("attention pos_bias_u, pos_bias_v [heads, d_k]", "xavier_uniform"),
    ),
)
_COMMON = dict(
    family=FAMILY, crop="mouth", frame_hz=FRAME_HZ, dim=768, n_layers=12, init_scheme=INIT_SCHEME
)

SPECS = (
    EncoderSpec(
        name="autoavsr-asr",
        modality="audio",
        default_checkpoint="LRS3_A_WER1.0.pth",
        description="Auto-AVSR audio encoder (raw waveform ResNet-18 + Conformer), LRS3",
        **_COMMON,  # type: ignore[arg-type]
    ),
    EncoderSpec(
        name="autoavsr-vsr",
        modality="visual",
        default_checkpoint="LRS3_V_WER19.1.pth",
        description="Auto-AVSR visual encoder (mouth ROI 3-D/2-D ResNet-18 + Conformer), LRS3",
        **_COMMON,  # type: ignore[arg-type]
    ),
    EncoderSpec(
        name="autoavsr-avsr",
        modality="audiovisual",
        default_checkpoint="LRS3_AV_WER0.9.pth",
        description="Auto-AVSR audio-visual encoder (two Conformers + fusion MLP), LRS3",
        **_COMMON,  # type: ignore[arg-type]
    ),
)


def load(
    spec: EncoderSpec,
    checkpoint: str | None,
    *,
    device: str,
    dtype: str,
    random_init: bool,
    trust_checkpoint: bool = False,
    **options: Any,
) -> AutoAVSREncoder:
    """Loader registered for the three ``autoavsr-*`` names.

    ``checkpoint``: an Auto-AVSR ``.pth`` state dict (a path, or a file name in the
    checkpoint directory, see :func:`~featstore.encoders.checkpoints.find_local_checkpoint`)
    or a directory written by ``featstore encoders convert``. ``random_init``: that
    checkpoint's architecture (the published one when the default file is absent)
    with random weights, initialised with option ``random_init_scheme`` ("native":
    :data:`INIT_SCHEME`, or "bert"). ``trust_checkpoint``: read the pickle with full
    ``torch.load``.
    """
    from featstore.encoders.autoavsr.config import AutoAVSRConfig
    from featstore.encoders.autoavsr.encoder import build_encoder
    from featstore.encoders.base import checkpoint_sha256
    from featstore.encoders.checkpoints import find_local_checkpoint
    from featstore.encoders.convert import is_converted, read_converted

    unknown = sorted(set(options) - {INIT_OPTION})
    if unknown:
        raise EncoderError(f"{spec.name} takes only option {INIT_OPTION}, got {unknown}")
    scheme = resolve_scheme(spec, options, random_init=random_init)
    if not checkpoint:
        raise CheckpointError(f"{spec.name} needs a checkpoint (an Auto-AVSR .pth file)")
    common = dict(checkpoint=checkpoint, device=device, dtype=dtype, init_scheme=scheme)
    try:
        path = find_local_checkpoint(checkpoint)
    except CheckpointError:
        if random_init and checkpoint == spec.default_checkpoint:
            return build_encoder(spec, None, checkpoint_sha256=None, **common)  # type: ignore[arg-type]
        raise
    sha = None if random_init else checkpoint_sha256(path)
    if is_converted(path):
        converted = read_converted(path, family=FAMILY)
        config = AutoAVSRConfig.from_dict(converted.config)
        return build_encoder(
            spec,
            None,
            checkpoint_sha256=sha,
            config=config,
            state=converted.state_dict,
            **common,  # type: ignore[arg-type]
        )
    if path.is_dir():
        raise CheckpointError(
            f"{spec.name}: {path} is a directory but not a converted checkpoint; pass the "
            f"Auto-AVSR .pth file"
        )
    return build_encoder(
        spec,
        path,
        checkpoint_sha256=sha,
        trust=trust_checkpoint,
        **common,  # type: ignore[arg-type]
    )


def to_converted(encoder: Encoder) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(state_dict, config)`` of a loaded Auto-AVSR encoder, canonical key names."""
    from featstore.encoders.autoavsr.encoder import AutoAVSREncoder

    if not isinstance(encoder, AutoAVSREncoder):
        raise EncoderError(f"{encoder.name} is not an Auto-AVSR encoder")
    return dict(encoder.model.state_dict()), encoder.config.to_dict()


for _spec in SPECS:
    register(_spec, load)
register_converter(FAMILY, to_converted)
