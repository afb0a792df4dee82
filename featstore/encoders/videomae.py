"""VideoMAE features, one row per tubelet time step at 12.5 Hz (DESIGN.md "Encoders").

Input: full RGB frames (crop "none") cut into windows of ``num_frames`` (16)
frames with stride 16; the last, short window is dropped, so a clip of ``T``
frames gives ``T // 16`` windows and a clip shorter than 16 frames cannot be
encoded (:class:`ClipError`). Each window gives ``16 / tubelet_size`` (8) rows:
row ``r`` is the mean over the spatial patch tokens of tubelet time step ``r``,
covering frames ``2r, 2r + 1``, i.e. ``[r / 12.5, (r + 1) / 12.5)`` s. Rows per clip:
``(T // 16) * 8`` (:meth:`VideoMAEEncoder.n_rows`).

Preprocessing is the checkpoint's ``VideoMAEImageProcessor`` done as its
Pillow backend does it (resize the shorter side to 224 bilinear, centre crop
224, rescale 1/255, normalise; settings from ``preprocessor_config.json``, else
those of ``MCG-NJU/videomae-large``: ImageNet mean/std).

Layers: ``i`` = ``hidden_states[i]`` (0 = patch + position embeddings);
``"last"`` = ``last_hidden_state``, which for pre-trained checkpoints
(``use_mean_pooling=False``) carries the encoder's final LayerNorm and for
fine-tuned ones (``use_mean_pooling=True``) equals the last block's output.
Windows are independent, so batching is padding-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from featstore.encoders import register
from featstore.encoders.base import CheckpointError, Clip, ClipError, EncoderSpec
from featstore.encoders.clip import check_image_size, rgb_frames
from featstore.encoders.hf import (
    HFEncoder,
    ImagePreprocess,
    LoadedModel,
    batch_spans,
    check_options,
    default_threads,
    inference,
    load_image_preprocess,
    load_model,
    positive_int_option,
    to_numpy,
)
from featstore.encoders.random_init import OPTION as INIT_OPTION
from featstore.encoders.random_init import InitScheme, resolve_scheme
from featstore.layout import LAST, Layer
from featstore.timebase import FRAME_HZ

TUBELET_FRAMES = 2  # the default checkpoint's tubelet_size: one row per two 25 fps frames

if TYPE_CHECKING:
    from featstore.spatial.base import SpatialExplainer

INIT_SCHEME = InitScheme(
    name="videomae-hf",
    summary="the model's own _init_weights (transformers' generic PreTrainedModel scheme)",
    source="transformers PreTrainedModel._init_weights (VideoMAE defines none), run by post_init",
    rules=(
        ("Linear (attention, MLP), tubelet Conv3d", "N(0, initializer_range = 0.02), bias 0"),
        ("LayerNorm", "weight 1, bias 0"),
        ("position embeddings", "fixed sinusoid table (not a parameter)"),
    ),
)
SPEC = EncoderSpec(
    name="videomae",
    family="videomae",
    modality="visual",
    crop="none",
    frame_hz=FRAME_HZ / TUBELET_FRAMES,
    dim=1024,
    n_layers=24,
    default_checkpoint="MCG-NJU/videomae-large",
    description="VideoMAE: 16-frame windows (stride 16), mean patch token per tubelet step",
    init_scheme=INIT_SCHEME,
)

OPTIONS = ("windows_per_batch", "preprocess_threads", INIT_OPTION)
DEFAULT_WINDOWS_PER_BATCH = 4
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_config() -> Any:
    """The architecture of ``MCG-NJU/videomae-large`` (ViT-L, 16 frames, tubelet 2, patch
    16, final LayerNorm), used for ``random_init`` when that checkpoint is not cached."""
    from transformers import VideoMAEConfig

    return VideoMAEConfig(
        image_size=224,
        patch_size=16,
        num_channels=3,
        num_frames=16,
        tubelet_size=2,
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        hidden_act="gelu",
        qkv_bias=True,
        layer_norm_eps=1e-12,
        use_mean_pooling=False,
    )


class VideoMAEEncoder(HFEncoder):
    """A loaded VideoMAE encoder."""

    def __init__(
        self,
        spec: EncoderSpec,
        loaded: LoadedModel,
        preprocess: ImagePreprocess,
        *,
        compute_dtype: str,
        random_init: bool,
        windows_per_batch: int = DEFAULT_WINDOWS_PER_BATCH,
        preprocess_threads: int = 1,
    ) -> None:
        config = loaded.config
        super().__init__(
            spec,
            loaded,
            hidden_dim=int(config.hidden_size),
            compute_dtype=compute_dtype,
            random_init=random_init,
        )
        self.preprocess = preprocess
        if config.num_frames % config.tubelet_size:
            raise CheckpointError(
                f"checkpoint {loaded.checkpoint}: num_frames {config.num_frames} is not a "
                f"multiple of tubelet_size {config.tubelet_size}"
            )
        self.window = int(config.num_frames)  # frames per window (= stride)
        self.steps = self.window // int(config.tubelet_size)  # rows per window
        self.windows_per_batch = windows_per_batch
        self.preprocess_threads = preprocess_threads

    def n_rows(self, n_frames: int) -> int:
        """Whole windows only: ``(n_frames // 16) * 8`` rows."""
        return (n_frames // self.window) * self.steps

    def spatial(self, layer: Layer) -> SpatialExplainer:
        """The exact decomposition of a tubelet step's mean patch token
        (:mod:`featstore.encoders.videomae_spatial`)."""
        from featstore.encoders.videomae_spatial import VideoMAELinear

        return VideoMAELinear(self, self.resolve_layers([layer])[0])

    def encode(
        self, clips: Sequence[Clip], layers: Sequence[Layer]
    ) -> list[dict[Layer, np.ndarray]]:
        import torch

        layers = self.resolve_layers(layers)
        frames = [rgb_frames(clip, self.name) for clip in clips]
        n_windows = [f.shape[0] // self.window for f in frames]
        for clip, n in zip(clips, n_windows, strict=True):
            if n == 0:
                raise ClipError(
                    f"{clip.video_id}: {clip.duration_frames} frames is shorter than one "
                    f"{self.window}-frame {self.name} window"
                )
        out = [
            {k: np.empty((n * self.steps, self.layer_dims[k]), np.float32) for k in layers}
            for n in n_windows
        ]
        need_hidden = any(layer != LAST for layer in layers)
        w = self.window
        for spans in batch_spans(n_windows, self.windows_per_batch):
            pixels = np.concatenate(
                [
                    self.preprocess(
                        frames[i][start * w : stop * w], threads=self.preprocess_threads
                    )
                    for i, start, stop in spans
                ]
            )  # [N * 16, 3, 224, 224]
            x = torch.from_numpy(pixels).to(self.device)
            x = x.view(-1, w, *x.shape[1:])  # [N, 16, 3, 224, 224]
            with inference(self.device, self.compute_dtype):
                res = self.model(pixel_values=x, output_hidden_states=need_hidden)
                rows = {
                    k: self._step_means(
                        res.last_hidden_state if k == LAST else res.hidden_states[k]
                    )
                    for k in layers
                }  # {layer: [N, 8, D]}
            offset = 0
            for i, start, stop in spans:
                for k, v in rows.items():
                    chunk = v[offset : offset + stop - start]  # [n, 8, D]
                    out[i][k][start * self.steps : stop * self.steps] = chunk.reshape(
                        -1, chunk.shape[-1]
                    )
                offset += stop - start
        return out

    def _step_means(self, tokens: Any) -> np.ndarray:
        """``[N, steps * P, D]`` tokens (ordered time, row, column) -> ``[N, steps, D]``."""
        n, length, dim = tokens.shape
        return to_numpy(
            tokens.float().reshape(n, self.steps, length // self.steps, dim).mean(dim=2)
        )


def load(
    spec: EncoderSpec,
    checkpoint: str | None,
    *,
    device: str,
    dtype: str,
    random_init: bool,
    **options: Any,
) -> VideoMAEEncoder:
    """Loader registered as ``videomae``. Options: ``windows_per_batch`` (16-frame
    windows per forward, default 4), ``preprocess_threads`` (default up to 4),
    ``random_init_scheme`` (:mod:`~featstore.encoders.random_init`)."""
    check_options(spec, options, OPTIONS)
    scheme = resolve_scheme(spec, options, random_init=random_init)
    per_batch = positive_int_option(
        spec, "windows_per_batch", options.get("windows_per_batch", DEFAULT_WINDOWS_PER_BATCH)
    )
    threads = positive_int_option(
        spec, "preprocess_threads", options.get("preprocess_threads", default_threads())
    )
    from transformers import VideoMAEConfig, VideoMAEModel
    from transformers.models.videomae.image_processing_pil_videomae import (
        VideoMAEImageProcessorPil,
    )

    loaded = load_model(
        spec,
        checkpoint,
        model_cls=VideoMAEModel,
        read_config=VideoMAEConfig.from_pretrained,
        builtin_config=default_config,
        init_scheme=scheme,
        device=device,
    )
    preprocess = load_image_preprocess(
        loaded.path,
        VideoMAEImageProcessorPil,
        {"image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD)},
    )
    check_image_size(preprocess, int(loaded.config.image_size), loaded.checkpoint)
    return VideoMAEEncoder(
        spec,
        loaded,
        preprocess,
        compute_dtype=dtype,
        random_init=random_init,
        windows_per_batch=per_batch,
        preprocess_threads=threads,
    )


register(SPEC, load)
