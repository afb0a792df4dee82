"""Loading Auto-AVSR checkpoints and encoding clips (imports torch; see the package doc)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from featstore.encoders.autoavsr.config import (
    AutoAVSRConfig,
    canonical_state_dict,
    default_config,
    infer_config,
)
from featstore.encoders.autoavsr.model import AudioVisualModel, Branch, build_model
from featstore.encoders.base import (
    CheckpointError,
    Clip,
    ClipError,
    Encoder,
    EncoderSpec,
    autocast,
    pad_batch,
)
from featstore.encoders.random_init import BERT, InitScheme, bert_init_, seeded
from featstore.encoders.resnet import AUDIO_SAMPLES_PER_STEP
from featstore.layout import LAST, Layer

if TYPE_CHECKING:
    from featstore.spatial.base import SpatialExplainer

log = logging.getLogger(__name__)

AUDIO_NORM_EPS = 1e-8


def read_state_dict(path: Path, *, trust: bool = False) -> dict[str, torch.Tensor]:
    """A bare Auto-AVSR state dict (also accepts Lightning's ``{'state_dict': {'model.*'}}``)."""
    from featstore.encoders.checkpoints import load_checkpoint

    obj: Mapping[str, Any] = load_checkpoint(path, trust=trust)
    if isinstance(obj.get("state_dict"), Mapping):
        obj = {str(k).removeprefix("model."): v for k, v in obj["state_dict"].items()}
    bad = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"{path} is not a bare state dict of tensors (non-tensor entries: {', '.join(bad[:5])})"
        )
    return {str(k): v for k, v in obj.items()}


def load_strict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load every parameter and buffer of ``model`` from ``state``; any gap is an error.

    BatchNorm's ``num_batches_tracked`` (absent from old checkpoints) is the only key that
    may be missing; it is not used in inference.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {', '.join(missing[:4])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:4])})")
    if wrong:
        problems.append(f"{len(wrong)} of the wrong shape (e.g. {'; '.join(wrong[:3])})")
    if problems:
        raise CheckpointError(f"{source} does not fit the architecture: " + "; ".join(problems))
    converted = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(converted, strict=False)


def audio_model_input(audio: np.ndarray) -> np.ndarray:
    """Layer norm over the whole clip (no affine, eps 1e-8), as Auto-AVSR's transform does."""
    a = np.asarray(audio, dtype=np.float64)
    return ((a - a.mean()) / np.sqrt(a.var() + AUDIO_NORM_EPS)).astype(np.float32)


def fit_audio(audio: np.ndarray, n_frames: int) -> np.ndarray:
    """Cut or zero-pad audio to ``n_frames * 640`` samples (Auto-AVSR's ``cut_or_pad``)."""
    n = n_frames * AUDIO_SAMPLES_PER_STEP
    if audio.shape[0] >= n:
        return audio[:n]
    return np.concatenate([audio, np.zeros(n - audio.shape[0], dtype=audio.dtype)])


class AutoAVSREncoder(Encoder):
    """A loaded Auto-AVSR encoder (``autoavsr-asr``, ``-vsr``, ``-avsr``)."""

    def __init__(
        self,
        spec: EncoderSpec,
        model: Branch | AudioVisualModel,
        config: AutoAVSRConfig,
        *,
        checkpoint: str | None,
        checkpoint_sha256: str | None,
        random_init: bool,
        device: str,
        compute_dtype: str,
        unused_keys: Sequence[str] = (),
        random_init_scheme: InitScheme | None = None,
    ) -> None:
        branches = [b for b in (config.video, config.audio) if b is not None]
        hidden = sum(b.d_model for b in branches)  # AV: video and audio states concatenated
        layer_dims: dict[Layer, int] = dict.fromkeys(range(config.n_blocks + 1), hidden)
        layer_dims[LAST] = branches[0].d_model
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
        self.model = model
        self.config = config
        self.unused_keys = list(unused_keys)  # checkpoint keys outside the encoder

    def spatial(self, layer: Layer) -> SpatialExplainer:
        """Grad-CAM on the video front end (:mod:`featstore.encoders.autoavsr.spatial`)."""
        from featstore.encoders.autoavsr.spatial import AutoAVSRGradCam

        return AutoAVSRGradCam(self, self.resolve_layers([layer])[0])

    # ------------------------------------------------------------------ inputs

    def _video(self, clip: Clip) -> np.ndarray:
        from featstore.crops import mouth_model_input

        frames = clip.frames
        if frames is None:
            raise ClipError(f"{clip.video_id}: {self.name} needs mouth crops (Clip.frames)")
        if frames.ndim != 3 or frames.shape[0] == 0:
            raise ClipError(
                f"{clip.video_id}: {self.name} expects grey mouth crops [T, 96, 96], "
                f"got {frames.shape}"
            )
        try:
            return mouth_model_input(frames)  # [T, 88, 88] float32
        except ValueError as exc:
            raise ClipError(f"{clip.video_id}: {exc}") from None

    def _audio(self, clip: Clip, n_frames: int | None) -> np.ndarray:
        audio = clip.audio
        if audio is None:
            raise ClipError(f"{clip.video_id}: {self.name} needs audio (Clip.audio)")
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if n_frames is not None:
            audio = fit_audio(audio, n_frames)
        if audio.shape[0] < AUDIO_SAMPLES_PER_STEP:
            raise ClipError(
                f"{clip.video_id}: {audio.shape[0]} audio samples is shorter than one "
                f"{AUDIO_SAMPLES_PER_STEP}-sample step"
            )
        return audio_model_input(audio)  # [S]

    # ------------------------------------------------------------------ forward

    def _front_video(self, branch: Branch, videos: list[np.ndarray]) -> torch.Tensor:
        padded, _ = pad_batch(videos)  # zeros in the normalised domain = Conv3d's padding
        return branch.frontend(torch.from_numpy(padded).to(self.device))  # [B, T, 512]

    def _front_audio(self, branch: Branch, audios: list[np.ndarray]) -> torch.Tensor:
        # one clip at a time: the 1-D convolutions would see a neighbour's padding
        rows = [
            branch.frontend(torch.from_numpy(a).to(self.device)[None])[0] for a in audios
        ]  # [T_i, 512]
        return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)  # [B, T, 512]

    def encode(
        self, clips: Sequence[Clip], layers: Sequence[Layer]
    ) -> list[dict[Layer, np.ndarray]]:
        layers = self.resolve_layers(layers)
        n_blocks = self.config.n_blocks
        upto = n_blocks if LAST in layers else max(int(k) for k in layers)
        modality = self.config.modality
        videos = [self._video(c) for c in clips] if modality != "audio" else []
        frames = [v.shape[0] for v in videos] if videos else [None] * len(clips)
        audios = (
            [self._audio(c, n) for c, n in zip(clips, frames, strict=True)]
            if modality != "visual"
            else []
        )
        lengths = frames if videos else [a.shape[0] // AUDIO_SAMPLES_PER_STEP for a in audios]
        with torch.inference_mode(), autocast(self.device, self.compute_dtype):
            mask = (
                torch.arange(max(lengths), device=self.device)[None]
                < torch.tensor(lengths, device=self.device)[:, None]
            )  # [B, T] True = valid
            rows = self._forward(videos, audios, mask, upto, layers)
            out_rows = {k: v.float().cpu().numpy() for k, v in rows.items()}
        return [
            {k: np.ascontiguousarray(out_rows[k][i, :n]) for k in layers}
            for i, n in enumerate(lengths)
        ]

    def _forward(
        self,
        videos: list[np.ndarray],
        audios: list[np.ndarray],
        mask: torch.Tensor,
        upto: int,
        layers: Sequence[Layer],
    ) -> dict[Layer, torch.Tensor]:
        """``{layer: [B, T, D]}`` for the requested layers."""
        model = self.model
        if isinstance(model, AudioVisualModel):
            v_states, v_final = model.video(self._front_video(model.video, videos), mask, upto=upto)
            a_states, a_final = model.audio(self._front_audio(model.audio, audios), mask, upto=upto)
            rows = {k: torch.cat([v_states[k], a_states[k]], dim=-1) for k in layers if k != LAST}
            if LAST in layers:
                rows[LAST] = model.fusion(torch.cat([v_final, a_final], dim=-1))
            return rows
        front = self._front_video(model, videos) if videos else self._front_audio(model, audios)
        states, final = model(front, mask, upto=upto)
        return {k: final if k == LAST else states[k] for k in layers}


def build_encoder(
    spec: EncoderSpec,
    path: Path | None,
    *,
    checkpoint: str | None,
    checkpoint_sha256: str | None,
    device: str,
    dtype: str,
    init_scheme: InitScheme | None,
    config: AutoAVSRConfig | None = None,
    state: Mapping[str, torch.Tensor] | None = None,
    trust: bool = False,
) -> AutoAVSREncoder:
    """Build, fill (or randomly initialise with ``init_scheme``) and wrap the model.

    ``path``: an original ``.pth`` checkpoint to read (``config``/``state`` unused), or
    None with ``config`` (and ``state`` unless random) given directly, as converted
    checkpoints and the built-in default architecture are.
    """
    random_init = init_scheme is not None
    ignored: list[str] = []
    if path is not None:
        canon = canonical_state_dict(read_state_dict(path, trust=trust))
        if canon.modality != spec.modality:
            raise CheckpointError(
                f"{path} is an Auto-AVSR {canon.modality} model; {spec.name} needs a "
                f"{spec.modality} one"
            )
        config, state, ignored = infer_config(canon), canon.state, canon.ignored
        if ignored:
            log.info(
                "%s: %d keys outside the encoder not loaded (%s, ...)",
                path,
                len(ignored),
                ", ".join(sorted({k.split(".")[0] for k in ignored})),
            )
    if config is None:
        config = default_config(spec.modality)
    if config.modality != spec.modality:
        raise CheckpointError(f"{spec.name} needs a {spec.modality} model, got {config.modality}")
    if init_scheme is not None:
        with seeded():  # the constructors' defaults are part of the scheme
            model = build_model(config)
            init_random_(model, init_scheme)
    elif state is None:
        raise CheckpointError(f"{spec.name}: no weights to load (pass random_init=True)")
    else:
        model = build_model(config)
        load_strict(model, state, str(path or checkpoint))
    model.eval().to(device)
    return AutoAVSREncoder(
        spec,
        model,
        config,
        checkpoint=checkpoint,
        checkpoint_sha256=None if random_init else checkpoint_sha256,
        random_init=random_init,
        device=device,
        compute_dtype=dtype,
        unused_keys=ignored,
        random_init_scheme=init_scheme,
    )


def init_random_(model: torch.nn.Module, scheme: InitScheme) -> None:
    """Auto-AVSR's own scheme on a model just built with PyTorch's defaults, or :data:`BERT`.

    Auto-AVSR's ``E2E`` (``espnet/nets/pytorch_backend/e2e_asr_conformer.py``, and the
    older audio-visual model) applies no initialisation of its own (no espnet
    ``initialize``): every Conv/Linear/BatchNorm/LayerNorm keeps PyTorch's default;
    only ``RelPositionMultiHeadedAttention`` draws ``pos_bias_u``/``pos_bias_v`` with
    ``xavier_uniform_`` (``transformer/attention.py``). Uses the global generator
    (:func:`~featstore.encoders.random_init.seeded`).
    """
    from featstore.encoders.autoavsr.conformer import RelPositionMultiHeadedAttention

    if scheme is BERT:
        bert_init_(model)
        return
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, RelPositionMultiHeadedAttention):
                torch.nn.init.xavier_uniform_(m.pos_bias_u)  # [heads, d_k]
                torch.nn.init.xavier_uniform_(m.pos_bias_v)
