"""CLIP image features, one row per 25 fps frame (DESIGN.md "Encoders").

Input: full RGB frames (crop "none"). Preprocessing is the checkpoint's
``CLIPImageProcessor`` done as its Pillow backend does it (resize the shorter
side to 224 with bicubic, centre crop 224, rescale by 1/255, normalise with the
processor's mean/std; settings from ``preprocessor_config.json``, else OpenAI's),
see :class:`featstore.encoders.hf.ImagePreprocess`.

Layers: ``i`` = the CLS token of ``hidden_states[i]`` of ``CLIPVisionModel``
(0 = the input of the first block, after CLIP's pre-LayerNorm); ``"last"`` = the
projected image embedding (``CLIPVisionModelWithProjection.image_embeds``: CLS
after the post-LayerNorm, through the visual projection), the embedding the paper
uses. Frames are independent, so batching is padding-free.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featstore.encoders import register
from featstore.encoders.base import CheckpointError, Clip, ClipError, EncoderSpec
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

if TYPE_CHECKING:
    from featstore.spatial.base import SpatialExplainer

INIT_SCHEME = InitScheme(
    name="clip-hf",
    summary="the model's own _init_weights (transformers CLIP), factor f = initializer_factor = 1",
    source="transformers CLIPPreTrainedModel._init_weights, run by the model's post_init",
    rules=(
        ("class_embedding", "N(0, D^-0.5 * f)"),
        ("patch_embedding Conv2d, position_embedding", "N(0, initializer_range * f = 0.02)"),
        ("attention q/k/v", "N(0, D^-0.5 * (2 * layers)^-0.5 * f), bias 0"),
        ("attention out_proj", "N(0, D^-0.5 * f), bias 0"),
        ("MLP fc1", "N(0, (2 * D)^-0.5 * f), bias 0"),
        ("MLP fc2", "N(0, D^-0.5 * (2 * layers)^-0.5 * f), bias 0"),
        ("visual_projection", "N(0, D^-0.5 * f)"),
        ("LayerNorm (pre, per block, post)", "weight 1, bias 0"),
    ),
)
SPEC = EncoderSpec(
    name="clip",
    family="clip",
    modality="visual",
    crop="none",
    frame_hz=FRAME_HZ,
    dim=768,
    n_layers=24,
    default_checkpoint="openai/clip-vit-large-patch14",
    description="CLIP ViT image encoder: projected CLS image embedding per frame",
    init_scheme=INIT_SCHEME,
)

OPTIONS = ("frames_per_batch", "preprocess_threads", INIT_OPTION)
DEFAULT_FRAMES_PER_BATCH = 64


def default_config() -> Any:
    """The vision tower of ``openai/clip-vit-large-patch14`` (ViT-L/14, 224 px, 768-d
    projection), used for ``random_init`` when that checkpoint is not cached."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=224,
        patch_size=14,
        projection_dim=768,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )


def read_vision_config(path: Path) -> Any:
    """The vision config of a checkpoint: a full CLIP checkpoint (like OpenAI's) keeps
    ``projection_dim`` at its top level, which the vision tower's projection needs."""
    from transformers import CLIPConfig, CLIPVisionConfig

    if json.loads((path / "config.json").read_text()).get("model_type") == "clip":
        full = CLIPConfig.from_pretrained(path)
        vision = full.vision_config
        vision.projection_dim = full.projection_dim
        return vision
    return CLIPVisionConfig.from_pretrained(path)


def check_image_size(preprocess: ImagePreprocess, image_size: int, checkpoint: str) -> None:
    """The processor must produce the square images the model was built for."""
    fixed = preprocess.crop_hw or preprocess.resize_hw
    if fixed != (image_size, image_size):
        raise CheckpointError(
            f"checkpoint {checkpoint}: the image processor gives {fixed or 'variable-size'} "
            f"images but the model expects {image_size}x{image_size}"
        )


def rgb_frames(clip: Clip, name: str) -> np.ndarray:
    """The clip's ``[T, H, W, 3]`` uint8 frames, validated."""
    frames = clip.frames
    if frames is None:
        raise ClipError(f"{clip.video_id}: {name} needs video frames, the clip has none")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ClipError(
            f"{clip.video_id}: {name} expects uint8 RGB frames [T, H, W, 3], "
            f"got {frames.dtype} {tuple(frames.shape)}"
        )
    if frames.shape[0] == 0:
        raise ClipError(f"{clip.video_id}: the clip has no frames")
    return frames


class ClipEncoder(HFEncoder):
    """A loaded CLIP vision tower with its projection."""

    def __init__(
        self,
        spec: EncoderSpec,
        loaded: LoadedModel,
        preprocess: ImagePreprocess,
        *,
        compute_dtype: str,
        random_init: bool,
        frames_per_batch: int = DEFAULT_FRAMES_PER_BATCH,
        preprocess_threads: int = 1,
    ) -> None:
        config = loaded.config
        super().__init__(
            spec,
            loaded,
            hidden_dim=int(config.hidden_size),
            last_dim=int(config.projection_dim),
            compute_dtype=compute_dtype,
            random_init=random_init,
        )
        self.preprocess = preprocess
        self.frames_per_batch = frames_per_batch
        self.preprocess_threads = preprocess_threads

    def spatial(self, layer: Layer) -> SpatialExplainer:
        """Grad-CAM on the last LayerNorm that sees every token
        (:mod:`featstore.encoders.clip_spatial`)."""
        from featstore.encoders.clip_spatial import ClipGradCam

        return ClipGradCam(self, self.resolve_layers([layer])[0])

    def encode(
        self, clips: Sequence[Clip], layers: Sequence[Layer]
    ) -> list[dict[Layer, np.ndarray]]:
        import torch

        layers = self.resolve_layers(layers)
        frames = [rgb_frames(clip, self.name) for clip in clips]
        out = [
            {k: np.empty((f.shape[0], self.layer_dims[k]), np.float32) for k in layers}
            for f in frames
        ]
        need_hidden = any(layer != LAST for layer in layers)
        for spans in batch_spans([f.shape[0] for f in frames], self.frames_per_batch):
            parts = [
                self.preprocess(frames[i][start:stop], threads=self.preprocess_threads)
                for i, start, stop in spans
            ]
            pixels = parts[0] if len(parts) == 1 else np.concatenate(parts)  # [N, 3, 224, 224]
            x = torch.from_numpy(pixels).to(self.device)
            with inference(self.device, self.compute_dtype):
                res = self.model(pixel_values=x, output_hidden_states=need_hidden)
                rows = {
                    k: to_numpy(res.image_embeds if k == LAST else res.hidden_states[k][:, 0])
                    for k in layers
                }  # {layer: [N, D]}
            offset = 0
            for i, start, stop in spans:
                for k, v in rows.items():
                    out[i][k][start:stop] = v[offset : offset + stop - start]
                offset += stop - start
        return out


def load(
    spec: EncoderSpec,
    checkpoint: str | None,
    *,
    device: str,
    dtype: str,
    random_init: bool,
    **options: Any,
) -> ClipEncoder:
    """Loader registered as ``clip``. Options: ``frames_per_batch`` (default 64),
    ``preprocess_threads`` (Pillow resizing threads, default up to 4),
    ``random_init_scheme`` (:mod:`~featstore.encoders.random_init`)."""
    check_options(spec, options, OPTIONS)
    scheme = resolve_scheme(spec, options, random_init=random_init)
    per_batch = positive_int_option(
        spec, "frames_per_batch", options.get("frames_per_batch", DEFAULT_FRAMES_PER_BATCH)
    )
    threads = positive_int_option(
        spec, "preprocess_threads", options.get("preprocess_threads", default_threads())
    )
    from transformers import CLIPVisionModelWithProjection
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    loaded = load_model(
        spec,
        checkpoint,
        model_cls=CLIPVisionModelWithProjection,
        read_config=read_vision_config,
        builtin_config=default_config,
        init_scheme=scheme,
        device=device,
    )
    preprocess = load_image_preprocess(loaded.path, CLIPImageProcessorPil, {})
    check_image_size(preprocess, int(loaded.config.image_size), loaded.checkpoint)
    return ClipEncoder(
        spec,
        loaded,
        preprocess,
        compute_dtype=dtype,
        random_init=random_init,
        frames_per_batch=per_batch,
        preprocess_threads=threads,
    )


register(SPEC, load)
