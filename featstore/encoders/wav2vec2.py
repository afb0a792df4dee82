"""wav2vec2 / XLS-R audio features, paired to 25 Hz (DESIGN.md "Encoders", "Timebase").

Input: 16 kHz mono float32 audio. Preprocessing is the checkpoint's feature
extractor: zero-mean unit-variance per utterance (``(x - mean) / sqrt(var + 1e-7)``,
as ``Wav2Vec2FeatureExtractor``) when its ``preprocessor_config.json`` says
``do_normalize``; without that file, when the model's ``feat_extract_norm`` is
``"layer"`` (the rule transformers documents: layer-norm models such as XLS-R
were trained on normalised audio).

Rows. The conv feature encoder gives ``F`` frames at 50 Hz, each
``L -> floor((L - kernel) / stride) + 1`` over the conv stack (XLS-R:
``F = floor((S - 400) / 320) + 1`` for ``S`` samples). Frames ``2t`` and ``2t + 1``
are concatenated (:func:`featstore.timebase.pair_frames`; an odd ``F`` repeats the
last frame), so row ``t`` covers ``[t / 25, (t + 1) / 25)`` s and every layer's
stored dim is twice the hidden size (XLS-R 2B: 3840). The rows are then aligned
to the clip's 25 fps frame count ``N`` (``Clip.duration_frames``: the video's
frame count when frames come along, else ``S // 640``): extra rows (a partial
last frame of audio, or audio longer than the video) are trimmed; one missing
row (audio a few ms shorter than the video) is filled by repeating the last row;
audio more than one frame shorter keeps its own length, and
:func:`featstore.timebase.reconcile` trims the video side later. For audio-only
clips the rows always equal ``S // 640``.

Layers: ``0..n_layers`` are Hugging Face ``hidden_states`` (0 = input of the first
block; with ``do_stable_layer_norm`` models such as XLS-R, block outputs carry no
final LayerNorm); ``"last"`` is ``last_hidden_state`` (after the final LayerNorm),
the features the paper uses.

Batching is padding-safe. Layer-norm feature encoders see each time step on its
own, so clips of different lengths share a zero-padded forward with an
attention mask. Group-norm feature encoders (``feat_extract_norm="group"``,
wav2vec2-base style) normalise the first conv layer over time, so padding would
change every frame: those run only clips of equal length together.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from featstore.encoders import register
from featstore.encoders.base import (
    CheckpointError,
    Clip,
    ClipError,
    EncoderSpec,
)
from featstore.encoders.hf import (
    HFEncoder,
    LoadedModel,
    check_options,
    inference,
    load_model,
    positive_int_option,
    read_preprocessor_config,
    to_numpy,
)
from featstore.encoders.random_init import OPTION as INIT_OPTION
from featstore.encoders.random_init import InitScheme, resolve_scheme
from featstore.layout import LAST, Layer
from featstore.timebase import FRAME_HZ, SAMPLE_RATE_HZ, pair_frames, samples_per_frame

INIT_SCHEME = InitScheme(
    name="wav2vec2-hf",
    summary="the model's own _init_weights (transformers), which is fairseq wav2vec 2.0's scheme",
    source=(
        "transformers Wav2Vec2PreTrainedModel._init_weights, run by Wav2Vec2Model(config) "
        "(post_init); fairseq wav2vec2.py for the positional conv"
    ),
    rules=(
        ("Linear (attention q/k/v/out, feed-forward)", "N(0, initializer_range = 0.02), bias 0"),
        ("feature projection Linear", "weight and bias U(-1/sqrt(in), 1/sqrt(in))"),
        (
            "feature-encoder Conv1d",
            "He normal (kaiming_normal_, fan_in); bias U(±sqrt(groups / (in * k)))",
        ),
        (
            "positional Conv1d (weight norm over dim 2)",
            "effective weight N(0, 2 * sqrt(1 / (k * C))), g = ||v||, bias 0. transformers 5 "
            "writes this into weight norm's recomputed weight, where it is lost (the conv "
            "keeps PyTorch's default); featstore applies it to the weight-norm parameters",
        ),
        ("LayerNorm, GroupNorm", "weight 1, bias 0"),
        ("masked_spec_embed (training only)", "U(0, 1)"),
    ),
)
SPEC = EncoderSpec(
    name="wav2vec2",
    family="wav2vec2",
    modality="audio",
    crop="none",
    frame_hz=FRAME_HZ,
    dim=3840,
    n_layers=48,
    default_checkpoint="facebook/wav2vec2-xls-r-2b",
    description="wav2vec2 / XLS-R hidden states, 50 Hz frames paired to 25 Hz (2x hidden size)",
    init_scheme=INIT_SCHEME,
)

DEFAULT_MAX_BATCH_SAMPLES = 320 * SAMPLE_RATE_HZ  # padded samples per forward (320 s of audio)
OPTIONS = ("max_batch_samples", INIT_OPTION)
MAX_PAD_FRACTION = 0.1  # the most a clip in a batch is padded, relative to its length


def default_config() -> Any:
    """The architecture of ``facebook/wav2vec2-xls-r-2b`` (its published config.json),
    used for ``random_init`` when that checkpoint is not in the local cache."""
    from transformers import Wav2Vec2Config

    return Wav2Vec2Config(
        hidden_size=1920,
        num_hidden_layers=48,
        num_attention_heads=16,
        intermediate_size=7680,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        conv_dim=(512,) * 7,
        conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        conv_stride=(5, 2, 2, 2, 2, 2, 2),
        conv_bias=True,
        feat_extract_norm="layer",
        feat_extract_activation="gelu",
        do_stable_layer_norm=True,
        num_conv_pos_embeddings=128,
        num_conv_pos_embedding_groups=16,
        mask_time_prob=0.075,
    )


def init_positional_conv_(model: Any) -> None:
    """The positional conv's initialisation as ``_init_weights`` means it (and fairseq does
    it): effective weight ``N(0, 2 * sqrt(1 / (k * C)))`` with ``g = ||v||``, bias 0.

    transformers 5's ``_init_weights`` draws it into the recomputed weight of the
    weight-norm parametrization, which is discarded, so the conv keeps PyTorch's
    default; assigning the weight goes through the parametrization's ``right_inverse``
    (``g = ||w||`` per kernel position, ``v = w``). Uses the global generator
    (:func:`~featstore.encoders.random_init.seeded` around the build).
    """
    import math

    import torch

    conv = model.encoder.pos_conv_embed.conv
    kernel, channels = conv.kernel_size[0], conv.in_channels
    std = 2 * math.sqrt(1 / (kernel * channels))
    with torch.no_grad():
        weight = torch.randn(conv.weight.shape) * std  # [C, C / groups, k]
        if hasattr(conv, "parametrizations"):
            conv.weight = weight
        else:  # the older torch.nn.utils.weight_norm: weight_g [1, 1, k], weight_v
            conv.weight_v.copy_(weight)
            conv.weight_g.copy_(torch.norm_except_dim(weight, 2, 2))
        conv.bias.zero_()


def conv_frames(n_samples: int, kernels: Sequence[int], strides: Sequence[int]) -> int:
    """50 Hz frames the conv feature encoder gives for ``n_samples`` (0 if too short)."""
    n = int(n_samples)
    for kernel, stride in zip(kernels, strides, strict=True):
        if n < kernel:
            return 0
        n = (n - kernel) // stride + 1
    return n


def align_rows(rows: np.ndarray, n_frames: int) -> np.ndarray:
    """Trim ``[R, D]`` rows to ``n_frames``; fill one missing row by repeating the last."""
    if rows.shape[0] > n_frames:
        return rows[:n_frames]
    if rows.shape[0] == n_frames - 1:
        return np.concatenate([rows, rows[-1:]], axis=0)
    return rows


def normalize_waveform(x: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance, in float32 exactly as ``Wav2Vec2FeatureExtractor``."""
    return (x - x.mean()) / np.sqrt(x.var() + 1e-7)


class Wav2Vec2Encoder(HFEncoder):
    """A loaded wav2vec2 model; see the module docstring for rows and batching."""

    def __init__(
        self,
        spec: EncoderSpec,
        loaded: LoadedModel,
        *,
        compute_dtype: str,
        random_init: bool,
        normalize: bool,
        max_batch_samples: int = DEFAULT_MAX_BATCH_SAMPLES,
    ) -> None:
        config = loaded.config
        if getattr(config, "add_adapter", False):
            raise CheckpointError(
                f"checkpoint {loaded.checkpoint} has an adapter (add_adapter=True), which "
                "changes the frame rate; use the plain wav2vec2 model"
            )
        super().__init__(
            spec,
            loaded,
            hidden_dim=2 * int(config.hidden_size),  # paired frames
            compute_dtype=compute_dtype,
            random_init=random_init,
        )
        self.config = config
        self.normalize = normalize
        # Group norm over time in the first conv layer: padding would leak into every frame.
        self.pad_batches = config.feat_extract_norm == "layer"
        self.max_batch_samples = max_batch_samples

    def frames_50hz(self, n_samples: int) -> int:
        return conv_frames(n_samples, self.config.conv_kernel, self.config.conv_stride)

    def encode(
        self, clips: Sequence[Clip], layers: Sequence[Layer]
    ) -> list[dict[Layer, np.ndarray]]:
        layers = self.resolve_layers(layers)
        waves = [self._waveform(clip) for clip in clips]
        out: list[dict[Layer, np.ndarray]] = [{} for _ in clips]
        for group in self._groups([w.shape[0] for w in waves]):
            frames = self._forward([waves[i] for i in group], layers)
            for i, per_layer in zip(group, frames, strict=True):
                n = clips[i].duration_frames
                out[i] = {k: align_rows(pair_frames(v), n) for k, v in per_layer.items()}
        return out

    def _waveform(self, clip: Clip) -> np.ndarray:
        audio = clip.audio
        if audio is None:
            raise ClipError(f"{clip.video_id}: {self.name} needs audio, the clip has none")
        audio = np.asarray(audio)
        if audio.ndim != 1 or not np.issubdtype(audio.dtype, np.floating):
            raise ClipError(
                f"{clip.video_id}: expected mono float audio [S], got {audio.dtype} {audio.shape}"
            )
        audio = audio.astype(np.float32, copy=False)
        if not np.isfinite(audio).all():
            raise ClipError(f"{clip.video_id}: audio has NaN or infinite samples")
        if self.frames_50hz(audio.shape[0]) < 1 or clip.duration_frames < 1:
            raise ClipError(
                f"{clip.video_id}: {audio.shape[0]} samples is shorter than one 25 fps frame "
                f"({samples_per_frame()} samples at {SAMPLE_RATE_HZ} Hz)"
            )
        return normalize_waveform(audio) if self.normalize else audio

    def _groups(self, lengths: list[int]) -> list[list[int]]:
        """Clip indices per forward: by length, at most ``max_batch_samples`` padded
        samples each, no clip padded by more than ``MAX_PAD_FRACTION`` of its length
        (padded samples cost a full forward each, and attention grows with the square of
        the padded length: on a CPU one clip per call beats a badly padded batch), and
        equal lengths only where padding is unsafe."""
        groups: list[list[int]] = []
        for i in sorted(range(len(lengths)), key=lambda j: lengths[j]):
            group = groups[-1] if groups else None
            if (
                group is not None
                and (self.pad_batches or lengths[group[0]] == lengths[i])
                and lengths[i] <= (1 + MAX_PAD_FRACTION) * lengths[group[0]]
                and (len(group) + 1) * lengths[i] <= self.max_batch_samples
            ):
                group.append(i)
            else:
                groups.append([i])
        return groups

    def _forward(
        self, waves: list[np.ndarray], layers: list[Layer]
    ) -> list[dict[Layer, np.ndarray]]:
        """One padded forward; per clip ``{layer: [F_i, H]}`` 50 Hz frames (padding cut)."""
        import torch

        lengths = [w.shape[0] for w in waves]
        batch = np.zeros((len(waves), max(lengths)), np.float32)  # [B, S_max]
        mask = np.zeros(batch.shape, np.int64)  # [B, S_max], 1 = real sample
        for b, w in enumerate(waves):
            batch[b, : w.shape[0]] = w
            mask[b, : w.shape[0]] = 1
        x = torch.from_numpy(batch).to(self.device)
        attention_mask = None
        if len(set(lengths)) > 1:  # only padded (layer-norm) batches differ in length
            attention_mask = torch.from_numpy(mask).to(self.device)
        need_hidden = any(layer != LAST for layer in layers)
        with inference(self.device, self.compute_dtype):
            out = self.model(x, attention_mask=attention_mask, output_hidden_states=need_hidden)
            stacked = {
                layer: to_numpy(
                    out.last_hidden_state if layer == LAST else out.hidden_states[layer]
                )
                for layer in layers
            }  # {layer: [B, F_max, H]}
        n_frames = [self.frames_50hz(n) for n in lengths]
        return [{k: v[b, : n_frames[b]] for k, v in stacked.items()} for b in range(len(waves))]


def load(
    spec: EncoderSpec,
    checkpoint: str | None,
    *,
    device: str,
    dtype: str,
    random_init: bool,
    **options: Any,
) -> Wav2Vec2Encoder:
    """Loader registered as ``wav2vec2``. Option: ``max_batch_samples`` (padded
    samples per forward, default 320 s of audio), ``random_init_scheme``
    (:mod:`~featstore.encoders.random_init`)."""
    check_options(spec, options, OPTIONS)
    scheme = resolve_scheme(spec, options, random_init=random_init)
    max_batch = positive_int_option(
        spec, "max_batch_samples", options.get("max_batch_samples", DEFAULT_MAX_BATCH_SAMPLES)
    )
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    loaded = load_model(
        spec,
        checkpoint,
        model_cls=Wav2Vec2Model,
        read_config=Wav2Vec2Config.from_pretrained,
        builtin_config=default_config,
        init_scheme=scheme,
        device=device,
        allow_missing=("masked_spec_embed",),  # SpecAugment's mask vector, training only
        fix_init=init_positional_conv_,
    )
    preprocessor = read_preprocessor_config(loaded.path)
    if preprocessor is not None and "do_normalize" in preprocessor:
        normalize = bool(preprocessor["do_normalize"])
    else:
        normalize = loaded.config.feat_extract_norm == "layer"
    return Wav2Vec2Encoder(
        spec,
        loaded,
        compute_dtype=dtype,
        random_init=random_init,
        normalize=normalize,
        max_batch_samples=max_batch,
    )


register(SPEC, load)
