"""The ``avhubert-a``, ``avhubert-v``, ``avhubert-av`` encoders: inputs, batching, rows.

Inputs, as AV-HuBERT prepares them:

- audio (``-a``, ``-av``): 16 kHz mono -> :func:`featstore.encoders.baselines.logfbank_rows`
  (26-band log filterbank at 100 Hz, 4 frames stacked to 104 dims at 25 Hz, each row
  layer-normalised; ``S // 640`` rows);
- video (``-v``, ``-av``): grey ``[T, 96, 96]`` uint8 mouth ROIs -> 88x88 centre crop,
  ``/ 255``, ``(x - 0.421) / 0.165``.

Rows: one per 25 fps frame. ``-a`` gives ``S // 640`` rows, ``-v`` one per mouth
crop; ``-av`` trims audio and video to the shorter of the two (DESIGN.md
"Timebase"; AV-HuBERT itself zero-pads or trims the *audio* to the video's length,
which differs only where the audio is shorter than the video). The single-modality
encoders feed zeros in place of the other modality's front-end output and never run
its front end, exactly as ``extract_finetune`` with ``source['video'] = None``.

Layers: ``0..L`` = hidden states (0 = input of the first block; ``i`` = output of
block ``i``, fairseq's ``output_layer=i``, without the final LayerNorm); ``"last"`` =
fairseq's default output (``output_layer=None``): the last block through
``encoder.layer_norm``.

Batching is padding-safe: clips are zero-padded after normalisation (the 3-D stem's
own zero padding), padded steps are zeroed before the positional conv and masked as
attention keys, as fairseq does; the other stages work frame by frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from featstore.encoders.avhubert.model import AVHubertModel
from featstore.encoders.avhubert.weights import LoadedAVHubert
from featstore.encoders.base import (
    Clip,
    ClipError,
    Encoder,
    EncoderError,
    EncoderSpec,
    autocast,
    pad_batch,
)
from featstore.encoders.baselines import MOUTH_CROP, MOUTH_MEAN, MOUTH_ROI, MOUTH_STD, logfbank_rows
from featstore.layout import LAST, Layer

if TYPE_CHECKING:
    from featstore.spatial.base import SpatialExplainer

__all__ = ["DEFAULT_MAX_BATCH_FRAMES", "AVHubertEncoder", "mouth_input"]

DEFAULT_MAX_BATCH_FRAMES = 1500  # padded frames per forward (60 s of video)


def mouth_input(frames: np.ndarray, *, video_id: str = "") -> np.ndarray:
    """``[T, 96, 96]`` uint8 grey mouth ROIs -> ``[T, 88, 88]`` float32 model input."""
    x = np.asarray(frames)
    if x.ndim != 3 or x.shape[1:] != (MOUTH_ROI, MOUTH_ROI) or x.dtype != np.uint8:
        raise ClipError(
            f"{video_id}: AV-HuBERT expects grey uint8 mouth crops [T, {MOUTH_ROI}, {MOUTH_ROI}] "
            f"(crop 'mouth'), got {x.dtype} {x.shape}"
        )
    if x.shape[0] == 0:
        raise ClipError(f"{video_id}: no frames to encode")
    off = (MOUTH_ROI - MOUTH_CROP) // 2
    crop = x[:, off : off + MOUTH_CROP, off : off + MOUTH_CROP].astype(np.float32)  # [T, 88, 88]
    return (crop / 255.0 - MOUTH_MEAN) / MOUTH_STD


class AVHubertEncoder(Encoder):
    """A loaded AV-HuBERT model fed audio, video or both (``spec.modality``)."""

    def __init__(
        self,
        spec: EncoderSpec,
        loaded: LoadedAVHubert,
        *,
        device: str,
        compute_dtype: str,
        random_init: bool,
        max_batch_frames: int = DEFAULT_MAX_BATCH_FRAMES,
    ) -> None:
        config = loaded.config
        dim = config.encoder_embed_dim
        layer_dims: dict[Layer, int] = {i: dim for i in range(config.encoder_layers + 1)}
        layer_dims[LAST] = dim
        super().__init__(
            spec,
            layer_dims=layer_dims,
            checkpoint=loaded.checkpoint,
            checkpoint_sha256=loaded.sha256,
            random_init=random_init,
            device=device,
            compute_dtype=compute_dtype,
            random_init_scheme=loaded.init_scheme,
        )
        self.model: AVHubertModel = loaded.model.to(device).eval()
        self.config = config
        self.finetuned = loaded.finetuned
        self.unused_keys: list[str] = list(loaded.unused_keys)
        self.max_batch_frames = max_batch_frames

    def spatial(self, layer: Layer) -> SpatialExplainer:
        """Grad-CAM on the video front end (:mod:`featstore.encoders.avhubert.spatial`)."""
        from featstore.encoders.avhubert.spatial import AVHubertGradCam

        return AVHubertGradCam(self, self.resolve_layers([layer])[0])

    def _inputs(self, clip: Clip) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(audio rows ``[T, 104]`` or None, video ``[T, 88, 88]`` or None), trimmed to one ``T``."""
        audio = video = None
        if self.spec.needs_audio:
            if clip.audio is None:
                raise ClipError(
                    f"{clip.video_id}: encoder {self.name} needs audio; the clip has none"
                )
            audio = logfbank_rows(clip.audio, video_id=clip.video_id)  # [S // 640, 104]
        if self.spec.needs_video:
            if clip.frames is None:
                raise ClipError(
                    f"{clip.video_id}: encoder {self.name} needs mouth crops; the clip has no frames"
                )
            video = mouth_input(clip.frames, video_id=clip.video_id)  # [T, 88, 88]
        if audio is not None and video is not None:
            n = min(audio.shape[0], video.shape[0])  # trim to the shorter (DESIGN.md "Timebase")
            audio, video = audio[:n], video[:n]
        return audio, video

    def encode(
        self, clips: Sequence[Clip], layers: Sequence[Layer]
    ) -> list[dict[Layer, np.ndarray]]:
        chosen = self.resolve_layers(layers)
        inputs = [self._inputs(clip) for clip in clips]
        lengths = [
            (a if a is not None else v).shape[0]  # type: ignore[union-attr]
            for a, v in inputs
        ]
        out: list[dict[Layer, np.ndarray]] = [{} for _ in clips]
        for group in self._groups(lengths):
            rows = self._forward([inputs[i] for i in group], chosen)
            for i, per_clip in zip(group, rows, strict=True):
                out[i] = per_clip
        return out

    def _groups(self, lengths: Sequence[int]) -> list[list[int]]:
        """Clips in length order, grouped so that padded frames stay under the cap."""
        groups: list[list[int]] = []
        for i in sorted(range(len(lengths)), key=lambda j: lengths[j]):
            if groups and lengths[i] * (len(groups[-1]) + 1) <= self.max_batch_frames:
                groups[-1].append(i)
            else:
                groups.append([i])
        return groups

    def _forward(
        self,
        batch: Sequence[tuple[np.ndarray | None, np.ndarray | None]],
        layers: Sequence[Layer],
    ) -> list[dict[Layer, np.ndarray]]:
        audio_t = video_t = None
        if batch[0][0] is not None:
            audio, lengths = pad_batch([a for a, _ in batch])  # [B, T, 104]
            audio_t = torch.from_numpy(audio).to(self.device)
        if batch[0][1] is not None:
            video, lengths = pad_batch([v for _, v in batch])  # [B, T, 88, 88]
            video_t = torch.from_numpy(video).to(self.device)[:, None]  # [B, 1, T, 88, 88]
        n = torch.as_tensor(lengths, device=self.device)
        t_max = int(lengths.max())
        pad = None
        if len(batch) > 1 and int(lengths.min()) < t_max:
            pad = torch.arange(t_max, device=self.device)[None, :] >= n[:, None]  # [B, T]
        try:
            with torch.inference_mode(), autocast(self.device, self.compute_dtype):
                hidden = self.model(audio_t, video_t, pad=pad, layers=layers)  # {layer: [B, T, D]}
        except torch.OutOfMemoryError as exc:
            raise EncoderError(
                f"{self.name}: out of memory on a batch of {len(batch)} clips x {t_max} frames; "
                "lower max_batch_frames"
            ) from exc
        cpu = {k: v.float().cpu().numpy() for k, v in hidden.items()}
        return [
            {k: np.ascontiguousarray(cpu[k][i, : int(lengths[i])]) for k in layers}
            for i in range(len(batch))
        ]
