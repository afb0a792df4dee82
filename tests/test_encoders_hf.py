"""The Hugging Face encoders (wav2vec2, CLIP, VideoMAE) against transformers itself.

Tiny random checkpoints are written with ``save_tiny_checkpoint`` and loaded
back through ``load_encoder``; each reference is computed here directly with
transformers' own processor and model classes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

# the Pillow processors: transformers' default ones need torchvision, which is not a dependency
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.videomae.image_processing_pil_videomae import (
    VideoMAEImageProcessorPil,
)

from featstore.encoders import (
    CheckpointError,
    Clip,
    ClipError,
    EncoderError,
    get_spec,
    load_encoder,
)
from featstore.encoders import clip as clip_module
from featstore.encoders import videomae as videomae_module
from featstore.encoders import wav2vec2 as wav2vec2_module
from featstore.encoders.base import resolve_checkpoint
from featstore.encoders.hf import ImagePreprocess, batch_spans
from featstore.encoders.tiny import save_tiny_checkpoint


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {
        "wav2vec2": save_tiny_checkpoint("wav2vec2", root / "w2v-layer"),
        "wav2vec2-group": save_tiny_checkpoint("wav2vec2", root / "w2v-group", variant="group"),
        "clip": save_tiny_checkpoint("clip", root / "clip"),
        "videomae": save_tiny_checkpoint("videomae", root / "videomae"),
    }


def _audio(n_samples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n_samples) / 16_000
    return (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(n_samples) + 0.1).astype(
        np.float32
    )


def _frames(n: int, h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _close(a: np.ndarray, b: np.ndarray, atol: float = 1e-5) -> None:
    np.testing.assert_allclose(a, b, atol=atol, rtol=1e-4)


# --------------------------------------------------------------------------- wav2vec2


def _w2v_reference(path: Path, audio: np.ndarray, n_frames: int) -> dict:
    """transformers' feature extractor + Wav2Vec2Model, pairs built by hand, trimmed."""
    extractor = transformers.Wav2Vec2FeatureExtractor.from_pretrained(path)
    model = transformers.Wav2Vec2Model.from_pretrained(path).eval()
    x = extractor(audio, sampling_rate=16_000, return_tensors="pt").input_values
    with torch.no_grad():
        out = model(x, output_hidden_states=True)
    ref = {}
    states = {**dict(enumerate(out.hidden_states)), "last": out.last_hidden_state}
    for layer, h in states.items():
        h = h[0].numpy()  # [F, H]
        if len(h) % 2:
            h = np.concatenate([h, h[-1:]])
        ref[layer] = np.concatenate([h[0::2], h[1::2]], axis=1)[:n_frames]  # [F/2, 2H]
    return ref


@pytest.mark.parametrize("n_samples", [640 * 20 + 50, 640 * 20 + 400, 16_000])
def test_wav2vec2_rows_equal_transformers(ckpts, n_samples):
    # +50: 39 frames at 50 Hz (odd: the last pair repeats frame 38); +400: 41 frames,
    # 21 pairs, trimmed to the 20 whole 25 fps frames
    enc = load_encoder("wav2vec2", str(ckpts["wav2vec2"]))
    audio = _audio(n_samples, 0)
    got = enc.encode([Clip("a", audio=audio)], "all")[0]
    ref = _w2v_reference(ckpts["wav2vec2"], audio, n_samples // 640)
    assert set(got) == set(ref) == {0, 1, 2, "last"}
    for layer in ref:
        assert got[layer].shape == (n_samples // 640, 64)
        _close(got[layer], ref[layer])
    if n_samples == 640 * 20 + 50:  # odd frame count: last row = [h38, h38]
        last = got["last"][-1]
        np.testing.assert_array_equal(last[:32], last[32:])


def test_wav2vec2_stable_layer_norm_last_differs_from_top_block(ckpts):
    enc = load_encoder("wav2vec2", str(ckpts["wav2vec2"]))
    got = enc.encode([Clip("a", audio=_audio(8000, 1))], [2, "last"])[0]
    assert not np.allclose(got[2], got["last"])  # "last" carries the final LayerNorm


@pytest.mark.parametrize("variant", ["wav2vec2", "wav2vec2-group"])
def test_wav2vec2_batch_equals_one_at_a_time(ckpts, variant):
    enc = load_encoder("wav2vec2", str(ckpts[variant]))
    assert enc.pad_batches is (variant == "wav2vec2")
    clips = [
        Clip("a", audio=_audio(9000, 1)),
        Clip("b", audio=_audio(16_000, 2)),
        Clip(
            "c", audio=_audio(9000, 3)
        ),  # same length as "a": batched together even for group norm
        Clip("d", audio=_audio(5000, 4)),
    ]
    batched = enc.encode(clips, [0, "last"])
    for clip, rows in zip(clips, batched, strict=True):
        alone = enc.encode([clip], [0, "last"])[0]
        for layer in (0, "last"):
            _close(rows[layer], alone[layer])


def test_wav2vec2_group_norm_padding_would_change_rows(ckpts):
    """Why group-norm models run unpadded: a padded forward changes the real frames."""
    path = ckpts["wav2vec2-group"]
    model = transformers.Wav2Vec2Model.from_pretrained(path).eval()
    short = torch.from_numpy(_audio(5000, 4))[None]
    padded = torch.nn.functional.pad(short, (0, 4000))
    with torch.no_grad():
        alone = model(short).last_hidden_state[0]
        inside = model(padded).last_hidden_state[0, : alone.shape[0]]
    assert not torch.allclose(alone, inside, atol=1e-3)


def test_wav2vec2_normalisation_rule(ckpts, tmp_path):
    enc = load_encoder("wav2vec2", str(ckpts["wav2vec2-group"]))
    assert enc.normalize  # preprocessor_config.json says do_normalize
    for variant, expected in (("wav2vec2", True), ("wav2vec2-group", False)):
        bare = tmp_path / variant
        shutil.copytree(ckpts[variant], bare)
        (bare / "preprocessor_config.json").unlink()
        assert load_encoder("wav2vec2", str(bare)).normalize is expected  # feat_extract_norm rule


def test_wav2vec2_rows_follow_the_video_frame_count(ckpts):
    enc = load_encoder("wav2vec2", str(ckpts["wav2vec2"]))
    frames = np.zeros((18, 4, 4, 3), np.uint8)
    longer = Clip("a", frames=frames, audio=_audio(640 * 20, 0))
    shorter = Clip("b", frames=frames, audio=_audio(640 * 18 - 300, 0))  # 34 frames -> 17 pairs
    much_shorter = Clip("c", frames=frames, audio=_audio(640 * 10, 0))
    a, b, c = enc.encode([longer, shorter, much_shorter], ["last"])
    assert a["last"].shape[0] == 18  # trimmed
    assert b["last"].shape[0] == 18  # one row filled by repeating the last
    np.testing.assert_array_equal(b["last"][-1], b["last"][-2])
    assert c["last"].shape[0] == 10  # never invented: timebase.reconcile trims the video
    assert wav2vec2_module.conv_frames(16_000, (10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)) == 49


def test_wav2vec2_bad_clips(ckpts):
    enc = load_encoder("wav2vec2", str(ckpts["wav2vec2"]))
    with pytest.raises(ClipError, match="needs audio"):
        enc.encode([Clip("v", frames=np.zeros((3, 4, 4, 3), np.uint8))], ["last"])
    with pytest.raises(ClipError, match="shorter than one 25 fps frame"):
        enc.encode([Clip("v", audio=np.zeros(500, np.float32))], ["last"])
    with pytest.raises(ClipError, match="NaN"):
        enc.encode([Clip("v", audio=np.full(1000, np.nan, np.float32))], ["last"])


# --------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("module_name", ["clip", "videomae"])
def test_image_preprocess_equals_transformers_pil_processor(ckpts, module_name):
    cls = {"clip": CLIPImageProcessorPil, "videomae": VideoMAEImageProcessorPil}[module_name]
    processor = cls.from_pretrained(ckpts[module_name])
    ours = ImagePreprocess.from_processor(processor)
    for h, w in [(48, 64), (300, 260), (224, 224), (225, 401)]:
        frames = _frames(3, h, w, h + w)
        if module_name == "clip":
            ref = processor(list(frames), return_tensors="np").pixel_values  # [3, 3, 224, 224]
        else:
            ref = processor(list(frames), return_tensors="np").pixel_values[0]
        got = ours(frames, threads=2)
        assert got.shape == ref.shape == (3, 3, 224, 224)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, ref)


def test_center_crop_pads_like_transformers():
    from transformers.image_transforms import center_crop

    from featstore.encoders.hf import center_crop as ours

    frames = _frames(2, 5, 9, 0)
    for size in [(7, 7), (4, 12), (5, 9)]:
        ref = np.stack([center_crop(f, size, input_data_format="channels_last") for f in frames])
        np.testing.assert_array_equal(ours(frames, size), ref)


def test_batch_spans():
    assert list(batch_spans([3, 0, 2], 2)) == [[(0, 0, 2)], [(0, 2, 3), (2, 0, 1)], [(2, 1, 2)]]


# --------------------------------------------------------------------------- CLIP


def test_clip_rows_equal_transformers(ckpts):
    path = ckpts["clip"]
    enc = load_encoder("clip", str(path), frames_per_batch=3)
    assert enc.layer_dims == {0: 32, 1: 32, 2: 32, "last": 16}
    clips = [Clip("a", frames=_frames(5, 40, 56, 0)), Clip("b", frames=_frames(2, 90, 70, 1))]
    got = enc.encode(clips, "all")
    processor = CLIPImageProcessorPil.from_pretrained(path)
    model = transformers.CLIPModel.from_pretrained(path).eval()  # the full checkpoint
    for clip, rows in zip(clips, got, strict=True):
        pixels = processor(list(clip.frames), return_tensors="pt").pixel_values
        with torch.no_grad():
            out = model.vision_model(pixel_values=pixels, output_hidden_states=True)
            embeds = model.visual_projection(out.pooler_output)  # [T, 16]
        _close(rows["last"], embeds.numpy())
        for i in range(3):
            _close(rows[i], out.hidden_states[i][:, 0].numpy())


def test_clip_bad_clips(ckpts):
    enc = load_encoder("clip", str(ckpts["clip"]))
    with pytest.raises(ClipError, match="needs video frames"):
        enc.encode([Clip("a", audio=_audio(640, 0))], ["last"])
    with pytest.raises(ClipError, match="uint8 RGB"):
        enc.encode([Clip("a", frames=np.zeros((2, 96, 96), np.uint8))], ["last"])


# --------------------------------------------------------------------------- VideoMAE


def test_videomae_rows_equal_transformers(ckpts):
    path = ckpts["videomae"]
    enc = load_encoder("videomae", str(path), windows_per_batch=1)
    frames = _frames(35, 40, 50, 0)  # 2 windows; the last 3 frames are dropped
    got = enc.encode([Clip("a", frames=frames)], [0, 2, "last"])[0]
    assert enc.n_rows(35) == 16
    processor = VideoMAEImageProcessorPil.from_pretrained(path)
    model = transformers.VideoMAEModel.from_pretrained(path).eval()
    for w in range(2):
        pixels = processor(list(frames[16 * w : 16 * (w + 1)]), return_tensors="pt").pixel_values
        with torch.no_grad():
            out = model(pixel_values=pixels, output_hidden_states=True)  # [1, 8 * 49, 32]
        for layer, h in (
            (0, out.hidden_states[0]),
            (2, out.hidden_states[2]),
            ("last", out.last_hidden_state),
        ):
            ref = h[0].view(8, 49, 32).mean(1).numpy()  # tubelet step means [8, 32]
            _close(got[layer][8 * w : 8 * (w + 1)], ref)
    assert not np.allclose(got[2], got["last"])  # pre-trained: final LayerNorm on "last"


def test_videomae_windows(ckpts):
    enc = load_encoder("videomae", str(ckpts["videomae"]))
    with pytest.raises(ClipError, match="shorter than one 16-frame"):
        enc.encode([Clip("short", frames=_frames(15, 32, 32, 0))], ["last"])
    a = Clip("a", frames=_frames(48, 32, 32, 1))
    one = load_encoder("videomae", str(ckpts["videomae"]), windows_per_batch=1)
    _close(enc.encode([a], ["last"])[0]["last"], one.encode([a], ["last"])[0]["last"])


# --------------------------------------------------------------------------- loading


@pytest.mark.parametrize("name", ["wav2vec2", "clip", "videomae"])
def test_random_init_is_the_architecture_with_random_weights(tmp_path, ckpts, name):
    """The checkpoint's architecture, none of its weights; the schemes' statistics are
    checked in test_random_init.py."""
    trained_path = save_tiny_checkpoint(name, tmp_path / name, seed=7)  # not the init's seed
    trained = load_encoder(name, str(trained_path))
    rand = load_encoder(name, str(trained_path), random_init=True)
    assert rand.random_init and rand.checkpoint_sha256 is None
    assert len(trained.checkpoint_sha256) == 64
    assert rand.layer_dims == trained.layer_dims
    a, b = trained.model.state_dict(), rand.model.state_dict()
    assert a.keys() == b.keys()
    assert all(a[k].shape == b[k].shape for k in a)
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())
    assert rand.info().extra["random_init_scheme"] == get_spec(name).init_scheme.name
    assert "random_init_scheme" not in trained.info().extra


@pytest.mark.parametrize("name", ["wav2vec2", "clip", "videomae"])
def test_config_only_checkpoint(tmp_path, name):
    path = save_tiny_checkpoint(name, tmp_path / name, weights=False)
    assert not (path / "model.safetensors").exists()
    enc = load_encoder(name, str(path), random_init=True)
    assert 0 in enc.layer_dims and "last" in enc.layer_dims
    with pytest.raises(CheckpointError, match="random_init"):
        load_encoder(name, str(path))


@pytest.mark.parametrize("module", [wav2vec2_module, clip_module, videomae_module])
def test_builtin_default_configs_match_the_specs(module):
    config = module.default_config()
    spec = module.SPEC
    assert config.num_hidden_layers == spec.n_layers
    last = {"wav2vec2": 2 * config.hidden_size, "clip": getattr(config, "projection_dim", 0)}
    assert last.get(spec.name, config.hidden_size) == spec.dim


def test_random_init_without_the_default_checkpoint(monkeypatch, ckpts):
    spec = get_spec("wav2vec2")
    try:
        resolve_checkpoint(spec.default_checkpoint)
        pytest.skip("the default checkpoint is in the local cache")
    except CheckpointError:
        pass
    tiny = transformers.Wav2Vec2Config.from_pretrained(ckpts["wav2vec2"])
    monkeypatch.setattr(wav2vec2_module, "default_config", lambda: tiny)  # not 2B params
    enc = load_encoder("wav2vec2", random_init=True)
    assert enc.checkpoint == spec.default_checkpoint and enc.random_init
    assert enc.layer_dims["last"] == 64
    with pytest.raises(CheckpointError, match="huggingface-cli download"):
        load_encoder("wav2vec2")


def test_checkpoint_errors(ckpts, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_encoder("clip", str(tmp_path / "nowhere"))
    with pytest.raises(CheckpointError, match="neither a local path nor in the Hugging Face cache"):
        load_encoder("clip", "nobody/not-cached-model")
    with pytest.raises(CheckpointError, match="expects a Hugging Face checkpoint directory"):
        load_encoder("clip", str(ckpts["clip"] / "model.safetensors"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        load_encoder("clip", str(tmp_path / "empty"))
    with pytest.raises(CheckpointError, match="does not fit"):
        load_encoder("videomae", str(ckpts["wav2vec2"]))  # another family's weights


def test_unknown_layers_and_options(ckpts):
    enc = load_encoder("wav2vec2", str(ckpts["wav2vec2"]))
    clip = Clip("a", audio=_audio(4000, 0))
    for layer in (3, "foo"):
        with pytest.raises(EncoderError, match="has no layer"):
            enc.encode([clip], [layer])
    with pytest.raises(EncoderError, match="does not take option"):
        load_encoder("clip", str(ckpts["clip"]), frames_per_batc=4)
    with pytest.raises(EncoderError, match="integer >= 1"):
        load_encoder("clip", str(ckpts["clip"]), frames_per_batch=0)
    with pytest.raises(EncoderError, match="CUDA is not available"):
        if torch.cuda.is_available():
            pytest.skip("CUDA present")
        load_encoder("clip", str(ckpts["clip"]), device="cuda")


def test_info_records_the_checkpoint(ckpts):
    enc = load_encoder("videomae", str(ckpts["videomae"]))
    info = enc.info(layers=["last"])
    assert info.frame_hz == 12.5 and info.layer_dims == {"last": 32}
    assert info.checkpoint == str(ckpts["videomae"]) and info.checkpoint_sha256
    assert not info.random_init and info.extra["family"] == "videomae"


def test_legacy_preprocessor_config(ckpts, tmp_path):
    """Old checkpoints (OpenAI's CLIP) write ``"size": 224`` and ``"crop_size": 224``."""
    legacy = tmp_path / "legacy"
    shutil.copytree(ckpts["clip"], legacy)
    (legacy / "preprocessor_config.json").write_text(
        '{"crop_size": 224, "do_center_crop": true, "do_normalize": true, "do_resize": true,'
        ' "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.5, 0.4, 0.3],'
        ' "image_std": [0.2, 0.25, 0.3], "resample": 3, "size": 224}'
    )
    enc = load_encoder("clip", str(legacy))
    assert enc.preprocess.shortest_edge == 224 and enc.preprocess.crop_hw == (224, 224)
    assert enc.preprocess.mean == (0.5, 0.4, 0.3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("name", ["wav2vec2", "clip", "videomae"])
def test_cuda_autocast_matches_cpu(ckpts, name, dtype):
    if name == "wav2vec2":
        clip = Clip("a", audio=_audio(640 * 20, 0))
    else:
        clip = Clip("a", frames=_frames(20, 40, 56, 0))
    cpu = load_encoder(name, str(ckpts[name])).encode([clip], "all")[0]
    gpu = load_encoder(name, str(ckpts[name]), device="cuda", dtype=dtype).encode([clip], "all")[0]
    for layer, ref in cpu.items():
        got = gpu[layer]
        assert got.dtype == np.float32 and got.shape == ref.shape
        cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
        assert cos.min() > (0.9999 if dtype == "float32" else 0.99), (layer, cos.min())
