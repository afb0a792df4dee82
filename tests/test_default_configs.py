"""The built-in architectures (``--random-init`` without a cached checkpoint) and the
preprocessing constants, pinned to the published sources they were checked against.

The paper's random baselines must have exactly the real models' architecture, so
each value here is the published one (config/yaml/model file named per test). Only
configuration objects are built: no model is instantiated.
"""

from __future__ import annotations

import pytest

from featstore.encoders.autoavsr.config import (
    RESNET18_WIDTHS,
    AutoAVSRConfig,
    BranchConfig,
    default_config,
)
from featstore.encoders.avhubert.config import BASE, LARGE, AVHubertConfig


def _fields(config: object, expected: dict) -> dict:
    """The attributes of ``config`` named in ``expected`` (tuples for lists)."""
    out = {}
    for key in expected:
        value = getattr(config, key)
        out[key] = tuple(value) if isinstance(value, list) else value
    return out


# facebook/wav2vec2-xls-r-2b config.json (XLS-R paper: 2B = 48 blocks, 1920 wide, FFN
# 7680, 16 heads); conv stack and norms as in every XLS-R config.json
XLSR_2B = {
    "hidden_size": 1920,
    "num_hidden_layers": 48,
    "num_attention_heads": 16,
    "intermediate_size": 7680,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
    "conv_dim": (512,) * 7,
    "conv_kernel": (10, 3, 3, 3, 3, 2, 2),
    "conv_stride": (5, 2, 2, 2, 2, 2, 2),
    "conv_bias": True,
    "num_feat_extract_layers": 7,
    "feat_extract_norm": "layer",
    "feat_extract_activation": "gelu",
    "do_stable_layer_norm": True,
    "num_conv_pos_embeddings": 128,
    "num_conv_pos_embedding_groups": 16,
    "add_adapter": False,
}

# openai/clip-vit-large-patch14 config.json, vision_config (+ top-level projection_dim)
CLIP_L14 = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 14,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}

# MCG-NJU/videomae-large config.json
VIDEOMAE_L = {
    "image_size": 224,
    "patch_size": 16,
    "num_channels": 3,
    "num_frames": 16,
    "tubelet_size": 2,
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-12,
    "use_mean_pooling": False,
}


def test_wav2vec2_default_is_xls_r_2b() -> None:
    pytest.importorskip("transformers")
    from featstore.encoders.wav2vec2 import SPEC, conv_frames, default_config

    config = default_config()
    assert _fields(config, XLSR_2B) == XLSR_2B
    assert SPEC.default_checkpoint == "facebook/wav2vec2-xls-r-2b"
    assert SPEC.n_layers == config.num_hidden_layers
    assert SPEC.dim == 2 * config.hidden_size  # 50 Hz frames paired to 25 Hz
    # receptive field 400 samples, hop 320: F = floor((S - 400) / 320) + 1
    assert conv_frames(399, config.conv_kernel, config.conv_stride) == 0
    assert conv_frames(400, config.conv_kernel, config.conv_stride) == 1
    assert conv_frames(16000, config.conv_kernel, config.conv_stride) == 49


def test_wav2vec2_normalisation_rule() -> None:
    """XLS-R's preprocessor_config.json has do_normalize true (also the
    Wav2Vec2FeatureExtractor default); the fallback rule agrees for layer-norm models."""
    pytest.importorskip("transformers")
    import numpy as np
    from transformers import Wav2Vec2FeatureExtractor

    from featstore.encoders.wav2vec2 import default_config, normalize_waveform

    assert Wav2Vec2FeatureExtractor().do_normalize is True
    assert default_config().feat_extract_norm == "layer"
    x = np.linspace(-0.3, 0.7, 1000, dtype=np.float32)
    ref = Wav2Vec2FeatureExtractor()(x, sampling_rate=16000, return_tensors="np")
    np.testing.assert_allclose(normalize_waveform(x), ref["input_values"][0], atol=1e-6)


def test_clip_default_is_vit_l14() -> None:
    pytest.importorskip("transformers")
    from featstore.encoders.clip import SPEC, default_config

    config = default_config()
    assert _fields(config, CLIP_L14) == CLIP_L14
    assert SPEC.default_checkpoint == "openai/clip-vit-large-patch14"
    assert SPEC.n_layers == config.num_hidden_layers
    assert SPEC.dim == config.projection_dim


def test_videomae_default_is_large() -> None:
    pytest.importorskip("transformers")
    from featstore.encoders.videomae import SPEC, default_config

    config = default_config()
    assert _fields(config, VIDEOMAE_L) == VIDEOMAE_L
    # config.json's "qkv_bias": true (query and value biases, no key bias); transformers 5
    # reads the key as ``qv_bias``, earlier releases kept the name
    assert getattr(config, "qv_bias", getattr(config, "qkv_bias", None)) is True
    assert SPEC.default_checkpoint == "MCG-NJU/videomae-large"
    assert SPEC.n_layers == config.num_hidden_layers
    assert SPEC.dim == config.hidden_size
    assert SPEC.frame_hz == 25.0 / config.tubelet_size


def test_fallback_image_preprocessing() -> None:
    """Without a preprocessor_config.json: CLIP uses the processor defaults, which are
    openai/clip-vit-large-patch14's (resize the shorter side to 224 bicubic, centre crop
    224, OpenAI mean/std); VideoMAE overrides the processor's 0.5/0.5 with ImageNet
    mean/std as MCG-NJU's preprocessor_config.json (resize 224 bilinear, crop 224)."""
    pytest.importorskip("transformers")
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from transformers.models.videomae.image_processing_pil_videomae import (
        VideoMAEImageProcessorPil,
    )

    from featstore.encoders.videomae import IMAGENET_MEAN, IMAGENET_STD

    clip = CLIPImageProcessorPil()
    assert clip.do_resize and clip.size.shortest_edge == 224
    assert clip.do_center_crop and (clip.crop_size.height, clip.crop_size.width) == (224, 224)
    assert int(clip.resample) == 3  # PIL bicubic
    assert tuple(clip.image_mean) == (0.48145466, 0.4578275, 0.40821073)
    assert tuple(clip.image_std) == (0.26862954, 0.26130258, 0.27577711)

    assert IMAGENET_MEAN == (0.485, 0.456, 0.406)
    assert IMAGENET_STD == (0.229, 0.224, 0.225)
    mae = VideoMAEImageProcessorPil()
    assert mae.do_resize and mae.size.shortest_edge == 224
    assert mae.do_center_crop and (mae.crop_size.height, mae.crop_size.width) == (224, 224)
    assert int(mae.resample) == 2  # PIL bilinear


def test_avhubert_fairseq_defaults() -> None:
    """facebookresearch/av_hubert avhubert/hubert.py ``AVHubertConfig`` defaults
    (audio_feat_dim there is -1; every released yaml sets 104 = 26 fbank x 4 frames)."""
    d = AVHubertConfig()
    assert (
        d.encoder_layers,
        d.encoder_embed_dim,
        d.encoder_ffn_embed_dim,
        d.encoder_attention_heads,
    ) == (12, 768, 3072, 12)
    assert d.activation_fn == "gelu"
    assert d.layer_norm_first is False
    assert (d.conv_pos, d.conv_pos_groups) == (128, 16)
    assert d.audio_feat_dim == 104
    assert d.modality_fuse == "concat"
    assert d.resnet_relu_type == "prelu"
    assert d.sub_encoder_layers == 0
    # avhubert/resnet.py ResEncoder: 64-channel 3-D stem, ResNet-18 trunk
    assert d.frontend_channels == 64
    assert d.resnet_planes == (64, 128, 256, 512)


def test_avhubert_large_and_base() -> None:
    """avhubert/conf/pretrain/{large,noise_large}_vox_iter5.yaml and
    large_lrs3_iter5.yaml (LARGE); base_{vox,lrs3}_iter5.yaml (BASE)."""
    assert (
        LARGE.encoder_layers,
        LARGE.encoder_embed_dim,
        LARGE.encoder_ffn_embed_dim,
        LARGE.encoder_attention_heads,
    ) == (24, 1024, 4096, 16)
    assert LARGE.layer_norm_first is True
    assert LARGE.audio_feat_dim == 104
    assert LARGE.modality_fuse == "concat"
    assert LARGE.fused_dim == 2048
    assert BASE.to_dict() == {**AVHubertConfig().to_dict(), "layer_norm_first": True}
    assert BASE.fused_dim == 1536
    for cfg in (LARGE, BASE):
        assert (cfg.conv_pos, cfg.conv_pos_groups, cfg.activation_fn) == (128, 16, "gelu")


def test_avhubert_layer_norm_eps() -> None:
    pytest.importorskip("torch")
    from featstore.encoders.avhubert.model import LN_EPS

    assert LN_EPS == 1e-5  # fairseq.modules.LayerNorm -> torch.nn.LayerNorm default


@pytest.mark.parametrize("modality", ["audio", "visual", "audiovisual"])
def test_autoavsr_default(modality: str) -> None:
    """mpc001/auto_avsr espnet/nets/pytorch_backend/e2e_asr_conformer.py (Linear 512 ->
    768, ConformerEncoder 768 / 12 heads / 3072 / 12 blocks / kernel 31) and, for the
    audio-visual model, configs/model/audiovisual_backbone/resnet_conformer.yaml
    (aux encoder identical, fusion_hdim 8192)."""
    config = default_config(modality)
    branch = dict(d_model=768, n_heads=12, ffn_dim=3072, n_blocks=12, conv_kernel=31)
    video = BranchConfig("video", **branch) if modality != "audio" else None
    audio = BranchConfig("audio", **branch) if modality != "visual" else None
    assert config == AutoAVSRConfig(modality, video=video, audio=audio, fusion_hidden=8192)
    assert RESNET18_WIDTHS == (64, 128, 256, 512)  # frontend/resnet.py, resnet1d.py
    assert config.n_blocks == 12


def test_autoavsr_layer_norm_eps() -> None:
    pytest.importorskip("torch")
    from featstore.encoders.autoavsr.conformer import LAYER_NORM_EPS

    assert LAYER_NORM_EPS == 1e-12  # espnet transformer/layer_norm.py


def test_fsfm_default_is_vit_b16() -> None:
    """wolo-wolo/FSFM-CVPR25 fsfm-3c/models_fsfm.py ``fsfm_vit_base_patch16`` (and
    models_vit.py): patch 16, 768 wide, depth 12, 12 heads, MLP ratio 4, eps 1e-6."""
    from featstore.encoders.fsfm import FSFM_HEADS, LAYER_NORM_EPS, SPEC, ViTConfig

    # Hugging Face Wolowolo/fsfm-3c finetuned_models/FF++_c23_32frames/ (main_test_DfD.py
    # --resume .../checkpoint-min_val_loss.pth), the paper's Supp. B model
    assert SPEC.default_checkpoint == "FF++_c23_32frames/checkpoint-min_val_loss.pth"

    d = ViTConfig()
    assert (d.img_size, d.patch_size, d.embed_dim, d.depth, d.num_heads, d.mlp_dim) == (
        224,
        16,
        768,
        12,
        12,
        3072,
    )
    # the default checkpoint, FF++_c23_32frames: models_vit with global_pool (fc_norm)
    assert d.final_norm == "fc_norm"
    assert LAYER_NORM_EPS == 1e-6
    # ViT-S/B/L/H of models_fsfm.py / models_vit.py (FSFM's ViT-S: 12 heads of 32)
    assert FSFM_HEADS == {384: 12, 768: 12, 1024: 16, 1280: 16}
    assert SPEC.dim == d.embed_dim and SPEC.n_layers == d.depth


def test_fsfm_normalisation_is_vggface2() -> None:
    """fsfm-3c/util/datasets.py (and main_pretrain.py): VGGFace2 mean/std."""
    from featstore.encoders.fsfm import MEAN, STD

    assert MEAN == (0.5482207536697388, 0.42340534925460815, 0.3654651641845703)
    assert STD == (0.2789176106452942, 0.2438540756702423, 0.23493893444538116)
