"""AV-HuBERT in plain PyTorch: fairseq checkpoints, strict loading, a functional reference,
modality masking, layer numbering, conversion, and the full-size key sets."""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from featstore.encoders import CheckpointError, Clip, EncoderError, load_encoder
from featstore.encoders.avhubert.config import BASE, LARGE, AVHubertConfig, config_from_checkpoint
from featstore.encoders.avhubert.tiny import TINY, fairseq_state_dict, save_tiny_checkpoint
from featstore.encoders.checkpoints import load_checkpoint
from featstore.encoders.convert import convert_encoder, is_converted
from featstore.encoders.fbank import logfbank

torch.set_num_threads(1)

T_FRAMES = 14


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("avhubert")


@pytest.fixture(scope="module")
def pretrained(ckpt_dir: Path) -> Path:
    return save_tiny_checkpoint(ckpt_dir / "pretrained.pt", seed=1)


@pytest.fixture(scope="module")
def clip() -> Clip:
    rng = np.random.default_rng(0)
    n = T_FRAMES * 640 + 200
    t = np.arange(n) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(n)).astype(np.float32)
    # a bright blob (the mouth) that moves over a textured background
    yy, xx = np.mgrid[:96, :96]
    frames = np.stack(
        [
            np.clip(
                60
                + 30 * rng.random((96, 96))
                + 150 * (((yy - 48) / 12) ** 2 + ((xx - 40 - i) / 20) ** 2 < 1),
                0,
                255,
            )
            for i in range(T_FRAMES)
        ]
    ).astype(np.uint8)
    return Clip("v0", frames=frames, audio=audio)


# ------------------------------------------------------------------ the reference


def ref_audio_rows(audio: np.ndarray) -> torch.Tensor:
    """logfbank x 32768 (int16 scale), 4 frames stacked, each row layer-normed: [S // 640, 104]."""
    fb = logfbank(audio.astype(np.float64) * 32768.0)  # [F, 26] at 100 Hz
    pad = -fb.shape[0] % 4
    fb = np.concatenate([fb, np.zeros((pad, 26))])
    rows = torch.from_numpy(fb.reshape(-1, 104)).float()
    rows = F.layer_norm(rows, (104,))
    return rows[: audio.shape[0] // 640]


def ref_video_input(frames: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(frames[:, 4:92, 4:92].astype(np.float32)) / 255.0
    return (x - 0.421) / 0.165  # [T, 88, 88]


def _bn(x: torch.Tensor, sd: dict, p: str) -> torch.Tensor:
    return F.batch_norm(
        x,
        sd[p + ".running_mean"],
        sd[p + ".running_var"],
        sd[p + ".weight"],
        sd[p + ".bias"],
        eps=1e-5,
    )


def ref_video_features(sd: dict, video: torch.Tensor) -> torch.Tensor:
    """[T, 88, 88] -> [T, D], written from AV-HuBERT's ResEncoder and SubModel."""
    p = "feature_extractor_video.resnet."
    x = F.conv3d(
        video[None, None], sd[p + "frontend3D.0.weight"], stride=(1, 2, 2), padding=(2, 3, 3)
    )
    x = F.prelu(_bn(x, sd, p + "frontend3D.1"), sd[p + "frontend3D.2.weight"])
    x = F.max_pool3d(x, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))  # [1, C, T, 22, 22]
    x = x[0].transpose(0, 1)  # [T, C, 22, 22]
    for stage in range(1, 5):
        for block in range(2):
            b = f"{p}trunk.layer{stage}.{block}."
            stride = 2 if stage > 1 and block == 0 else 1
            out = F.conv2d(x, sd[b + "conv1.weight"], stride=stride, padding=1)
            out = F.prelu(_bn(out, sd, b + "bn1"), sd[b + "relu1.weight"])
            out = _bn(F.conv2d(out, sd[b + "conv2.weight"], padding=1), sd, b + "bn2")
            if b + "downsample.0.weight" in sd:
                x = _bn(
                    F.conv2d(x, sd[b + "downsample.0.weight"], stride=stride),
                    sd,
                    b + "downsample.1",
                )
            x = F.prelu(out + x, sd[b + "relu2.weight"])
    x = x.mean(dim=(2, 3))  # [T, 512]
    return F.linear(
        x, sd["feature_extractor_video.proj.weight"], sd["feature_extractor_video.proj.bias"]
    )


def ref_forward(
    sd: dict, config: AVHubertConfig, audio: torch.Tensor | None, video: torch.Tensor | None
) -> dict:
    """Hidden states 0..L and "last" for one clip, straight from the state dict."""
    d, heads = config.encoder_embed_dim, config.encoder_attention_heads
    a = v = None
    if audio is not None:
        a = F.linear(
            audio,
            sd["feature_extractor_audio.proj.weight"],
            sd["feature_extractor_audio.proj.bias"],
        )
    if video is not None:
        v = ref_video_features(sd, video)
    t = (a if a is not None else v).shape[0]
    a = torch.zeros(t, d) if a is None else a  # the missing modality: zeros after its front end
    v = torch.zeros(t, d) if v is None else v
    x = F.layer_norm(
        torch.cat([a, v], dim=1), (2 * d,), sd["layer_norm.weight"], sd["layer_norm.bias"]
    )
    x = F.linear(x, sd["post_extract_proj.weight"], sd["post_extract_proj.bias"])
    g, w_v = sd["encoder.pos_conv.0.weight_g"], sd["encoder.pos_conv.0.weight_v"]
    weight = g * w_v / w_v.pow(2).sum(dim=(0, 1), keepdim=True).sqrt()
    k = config.conv_pos
    pos = F.conv1d(
        x.T[None],
        weight,
        sd["encoder.pos_conv.0.bias"],
        padding=k // 2,
        groups=config.conv_pos_groups,
    )
    x = x + F.gelu(pos[0, :, :t].T)
    hidden = {0: x}

    def ln(y: torch.Tensor, p: str) -> torch.Tensor:
        return F.layer_norm(y, (d,), sd[p + ".weight"], sd[p + ".bias"])

    def lin(y: torch.Tensor, p: str) -> torch.Tensor:
        return F.linear(y, sd[p + ".weight"], sd[p + ".bias"])

    for i in range(config.encoder_layers):
        p = f"encoder.layers.{i}."
        h = ln(x, p + "self_attn_layer_norm")
        q = lin(h, p + "self_attn.q_proj") * (d // heads) ** -0.5
        kk, vv = lin(h, p + "self_attn.k_proj"), lin(h, p + "self_attn.v_proj")
        outs = []
        for j in range(heads):
            s = slice(j * d // heads, (j + 1) * d // heads)
            outs.append(torch.softmax(q[:, s] @ kk[:, s].T, dim=-1) @ vv[:, s])
        x = x + lin(torch.cat(outs, dim=1), p + "self_attn.out_proj")
        x = x + lin(F.gelu(lin(ln(x, p + "final_layer_norm"), p + "fc1")), p + "fc2")
        hidden[i + 1] = x
    hidden["last"] = ln(x, "encoder.layer_norm")
    return hidden


def encoder_weights(path: Path) -> dict:
    state = load_checkpoint(path)["model"]
    prefix = "encoder.w2v_model."
    if any(k.startswith(prefix) for k in state):
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return {k: v.float() for k, v in state.items()}


def assert_rows_close(rows: dict, ref: dict, atol: float = 1e-4) -> None:
    assert set(rows) == set(ref)
    for layer, value in ref.items():
        np.testing.assert_allclose(
            rows[layer], value.numpy(), atol=atol, rtol=1e-4, err_msg=str(layer)
        )


# ------------------------------------------------------------------ forward and masking


@pytest.mark.parametrize("name", ["avhubert-a", "avhubert-v", "avhubert-av"])
def test_matches_reference_with_modality_masking(name: str, pretrained: Path, clip: Clip) -> None:
    enc = load_encoder(name, str(pretrained))
    rows = enc.encode([clip], "all")[0]
    sd = encoder_weights(pretrained)
    audio = ref_audio_rows(clip.audio) if name != "avhubert-v" else None
    video = ref_video_input(clip.frames) if name != "avhubert-a" else None
    assert_rows_close(rows, ref_forward(sd, TINY, audio, video))
    assert all(r.shape == (T_FRAMES, 32) and r.dtype == np.float32 for r in rows.values())


def test_layer_numbering(pretrained: Path, clip: Clip) -> None:
    enc = load_encoder("avhubert-av", str(pretrained))
    assert list(enc.layer_dims) == [0, 1, 2, "last"]
    rows = enc.encode([clip], [2, "last"])[0]
    # "last" = block 2's output through encoder.layer_norm; layer 2 carries no final LN
    sd = encoder_weights(pretrained)
    x = torch.from_numpy(rows[2])
    expected = F.layer_norm(
        x, (32,), sd["encoder.layer_norm.weight"], sd["encoder.layer_norm.bias"]
    )
    np.testing.assert_allclose(rows["last"], expected.numpy(), atol=1e-5)
    assert not np.allclose(rows[2], rows["last"], atol=1e-2)
    with pytest.raises(EncoderError, match="no layer"):
        enc.encode([clip], [3])


def test_audio_visual_trimmed_to_the_shorter(pretrained: Path, clip: Clip) -> None:
    enc = load_encoder("avhubert-av", str(pretrained))
    short_audio = Clip("s", frames=clip.frames, audio=clip.audio[: 10 * 640 + 5])
    assert enc.encode([short_audio], "last")[0]["last"].shape == (10, 32)
    short_video = Clip("s", frames=clip.frames[:9], audio=clip.audio)
    assert enc.encode([short_video], "last")[0]["last"].shape == (9, 32)


def test_batches_are_padding_safe(pretrained: Path, clip: Clip) -> None:
    enc = load_encoder("avhubert-av", str(pretrained))
    other = Clip("o", frames=clip.frames[:6], audio=clip.audio[: 6 * 640])
    together = enc.encode([clip, other], "all")
    for c, rows in zip([clip, other], together, strict=True):
        alone = enc.encode([c], "all")[0]
        for layer in rows:
            np.testing.assert_allclose(rows[layer], alone[layer], atol=1e-5)


def test_missing_modality_and_bad_crops(pretrained: Path, clip: Clip) -> None:
    from featstore.encoders import ClipError

    enc = load_encoder("avhubert-av", str(pretrained))
    with pytest.raises(ClipError, match="needs audio"):
        enc.encode([Clip("x", frames=clip.frames)], "last")
    with pytest.raises(ClipError, match="mouth crops"):
        enc.encode([Clip("x", frames=np.zeros((4, 88, 88), np.uint8), audio=clip.audio)], "last")


# ------------------------------------------------------------------ checkpoint layouts


def test_finetuned_fp16_layout(ckpt_dir: Path, clip: Clip) -> None:
    path = save_tiny_checkpoint(ckpt_dir / "finetuned16.pt", seed=2, finetuned=True, fp16=True)
    enc = load_encoder("avhubert-av", str(path))
    assert enc.finetuned
    assert all(p.dtype == torch.float32 for p in enc.model.parameters())
    assert enc.unused_keys == sorted(
        [
            "decoder.embed_out",
            "decoder.embed_tokens.weight",
            "decoder.layer_norm.weight",
            "decoder.layers.0.fc1.weight",
        ]
    )
    sd = encoder_weights(path)  # the fp16 values, upcast
    rows = enc.encode([clip], "all")[0]
    assert_rows_close(
        rows, ref_forward(sd, TINY, ref_audio_rows(clip.audio), ref_video_input(clip.frames))
    )


def test_pretrained_unused_keys_listed(pretrained: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO"):
        enc = load_encoder("avhubert-a", str(pretrained))
    assert enc.unused_keys == [
        "final_proj.bias",
        "final_proj.weight",
        "label_embs_concat",
        "mask_emb",
    ]
    assert "mask_emb" in caplog.text
    assert enc.checkpoint_sha256 and len(enc.checkpoint_sha256) == 64


def test_legacy_args_namespace_and_unknown_classes(ckpt_dir: Path, clip: Clip) -> None:
    """Older fairseq: ``args`` is an argparse.Namespace, ``cfg`` absent; plus a class from a
    module that exists only while saving: the restricted loader must neither import nor run it."""

    class Meter:
        def __reduce__(self) -> tuple:
            return (exec, ("raise SystemExit('executed')",))

    mod = types.ModuleType("fake_fairseq_logging_meters")
    Meter.__module__ = mod.__name__
    mod.Meter = Meter
    args = argparse.Namespace(
        arch="av_hubert",
        encoder_layers=2,
        encoder_embed_dim=32,
        encoder_ffn_embed_dim=64,
        encoder_attention_heads=2,
        layer_norm_first=True,
        conv_pos=8,
        conv_pos_groups=4,
        audio_feat_dim=104,
    )
    sys.modules[mod.__name__] = mod
    try:
        path = save_tiny_checkpoint(
            ckpt_dir / "legacy.pt",
            seed=3,
            extra={"cfg": None, "args": args, "extra_state": {"metrics": {"loss": Meter()}}},
        )
    finally:
        del sys.modules[mod.__name__]
    enc = load_encoder("avhubert-v", str(path))
    assert mod.__name__ not in sys.modules
    rows = enc.encode([clip], "last")[0]
    ref = ref_forward(encoder_weights(path), TINY, None, ref_video_input(clip.frames))
    np.testing.assert_allclose(rows["last"], ref["last"].numpy(), atol=1e-4)


def test_missing_and_misshaped_keys(ckpt_dir: Path) -> None:
    state = fairseq_state_dict(seed=4)
    del state["encoder.layers.1.fc2.bias"]
    path = save_tiny_checkpoint(ckpt_dir / "missing.pt", extra={"model": state})
    with pytest.raises(
        CheckpointError, match=r"lacks AV-HuBERT weights: encoder\.layers\.1\.fc2\.bias"
    ):
        load_encoder("avhubert-av", str(path))
    state = fairseq_state_dict(seed=4)
    state["post_extract_proj.bias"] = torch.zeros(31)
    path = save_tiny_checkpoint(ckpt_dir / "shape.pt", extra={"model": state})
    with pytest.raises(
        CheckpointError, match=r"post_extract_proj\.bias \(31,\) \(expected \(32,\)\)"
    ):
        load_encoder("avhubert-av", str(path))
    state = fairseq_state_dict(seed=4)
    state["feature_extractor_audio.encoder.layers.0.fc1.weight"] = torch.zeros(2, 2)
    path = save_tiny_checkpoint(ckpt_dir / "stray.pt", extra={"model": state})
    with pytest.raises(CheckpointError, match="does not use"):
        load_encoder("avhubert-av", str(path))


def test_config_defaults_and_conflicts() -> None:
    # the large yaml's keys; the rest (conv_pos, relu type, fuse, ...) are AV-HuBERT defaults
    yaml = {
        "model": {
            "_name": "av_hubert",
            "encoder_layers": 24,
            "encoder_embed_dim": 1024,
            "encoder_ffn_embed_dim": 4096,
            "encoder_attention_heads": 16,
            "layer_norm_first": True,
            "audio_feat_dim": 104,
            "final_dim": 256,
        }
    }
    assert config_from_checkpoint(yaml) == LARGE
    assert config_from_checkpoint({"model": {"w2v_args": yaml}}) == LARGE
    assert config_from_checkpoint({"model": {}}).layer_norm_first is False  # fairseq default
    shapes = {k: tuple(v.shape) for k, v in fairseq_state_dict(TINY).items()}
    stated = {"layer_norm_first": True, "encoder_attention_heads": 2}
    assert config_from_checkpoint({"model": stated}, shapes=shapes) == TINY
    with pytest.raises(CheckpointError, match="encoder_layers=24 but its weights have 2"):
        config_from_checkpoint(yaml, shapes=shapes)
    with pytest.raises(CheckpointError, match="sub_encoder_layers"):
        config_from_checkpoint({"model": {"sub_encoder_layers": 2}})


def test_post_ln_model_runs(ckpt_dir: Path, clip: Clip) -> None:
    config = AVHubertConfig(
        **{**TINY.to_dict(), "layer_norm_first": False, "resnet_planes": TINY.resnet_planes}
    )
    path = save_tiny_checkpoint(ckpt_dir / "postln.pt", config=config)
    enc = load_encoder("avhubert-a", str(path))
    assert not enc.config.layer_norm_first
    rows = enc.encode([clip], "all")[0]
    np.testing.assert_array_equal(rows[2], rows["last"])  # post-LN: no extra final norm
    sd = encoder_weights(path)  # layer 0 is after encoder.layer_norm (fairseq's post-LN order)
    unscaled = (rows[0] - sd["encoder.layer_norm.bias"].numpy()) / sd[
        "encoder.layer_norm.weight"
    ].numpy()
    np.testing.assert_allclose(unscaled.mean(-1), 0, atol=1e-4)
    np.testing.assert_allclose(unscaled.std(-1), 1, atol=1e-2)


# ------------------------------------------------------------------ random init, conversion


def test_random_init(pretrained: Path, clip: Clip) -> None:
    enc = load_encoder("avhubert-a", str(pretrained), random_init=True)
    assert enc.random_init and enc.checkpoint_sha256 is None
    assert enc.config == TINY
    ln = enc.model.encoder.layers[0].self_attn_layer_norm
    assert torch.equal(ln.weight, torch.ones(32))  # the scheme itself: test_random_init.py
    assert enc.info().extra["random_init_scheme"] == "avhubert-fairseq"
    assert np.isfinite(enc.encode([clip], "last")[0]["last"]).all()
    with pytest.raises(CheckpointError, match="only for random_init"):
        load_encoder("avhubert-a", str(pretrained), arch="base")
    with pytest.raises(EncoderError, match="no options"):
        load_encoder("avhubert-a", str(pretrained), bogus=1)


def test_convert_round_trip(ckpt_dir: Path, clip: Clip) -> None:
    source = save_tiny_checkpoint(ckpt_dir / "ft.pt", seed=5, finetuned=True)
    out = convert_encoder("avhubert-av", str(source), ckpt_dir / "converted")
    assert is_converted(out)
    original = load_encoder("avhubert-av", str(source))
    converted = load_encoder("avhubert-av", str(out))
    assert converted.config == original.config and converted.finetuned
    assert converted.checkpoint_sha256 == original.checkpoint_sha256
    assert converted.unused_keys == original.unused_keys
    a, b = original.encode([clip], "all")[0], converted.encode([clip], "all")[0]
    for layer in a:
        np.testing.assert_array_equal(a[layer], b[layer])
    with pytest.raises(CheckpointError, match="not a converted AV-HuBERT checkpoint"):
        load_encoder("avhubert-av", str(ckpt_dir))


def test_convert_cli(pretrained: Path, tmp_path: Path) -> None:
    from featstore.cli.main import app

    out = tmp_path / "conv"
    result = CliRunner().invoke(
        app,
        ["encoders", "convert", "avhubert-v", "--checkpoint", str(pretrained), "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").is_file() and is_converted(out)
    result = CliRunner().invoke(
        app,
        [
            "encoders",
            "convert",
            "avhubert-v",
            "--checkpoint",
            str(tmp_path / "no.pt"),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 1 and "not found" in result.output


# ------------------------------------------------------------------ full-size key sets


def fairseq_keys(layers: int, d: int, ffn: int) -> dict[str, tuple[int, ...]]:
    """AV-HuBERT's encoder keys and shapes, spelled out from fairseq's module names."""
    keys: dict[str, tuple[int, ...]] = {
        "feature_extractor_audio.proj.weight": (d, 104),
        "feature_extractor_audio.proj.bias": (d,),
        "feature_extractor_video.resnet.frontend3D.0.weight": (64, 1, 5, 7, 7),
        "feature_extractor_video.resnet.frontend3D.2.weight": (64,),
        "feature_extractor_video.proj.weight": (d, 512),
        "feature_extractor_video.proj.bias": (d,),
        "layer_norm.weight": (2 * d,),
        "layer_norm.bias": (2 * d,),
        "post_extract_proj.weight": (d, 2 * d),
        "post_extract_proj.bias": (d,),
        "encoder.pos_conv.0.bias": (d,),
        "encoder.pos_conv.0.weight_g": (1, 1, 128),
        "encoder.pos_conv.0.weight_v": (d, d // 16, 128),
        "encoder.layer_norm.weight": (d,),
        "encoder.layer_norm.bias": (d,),
    }

    def bn(prefix: str, c: int) -> None:
        for s in ("weight", "bias", "running_mean", "running_var"):
            keys[f"{prefix}.{s}"] = (c,)
        keys[f"{prefix}.num_batches_tracked"] = ()

    bn("feature_extractor_video.resnet.frontend3D.1", 64)
    cin = 64
    for stage, c in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            p = f"feature_extractor_video.resnet.trunk.layer{stage}.{block}."
            keys[p + "conv1.weight"] = (c, cin if block == 0 else c, 3, 3)
            keys[p + "conv2.weight"] = (c, c, 3, 3)
            keys[p + "relu1.weight"] = (c,)
            keys[p + "relu2.weight"] = (c,)
            bn(p + "bn1", c)
            bn(p + "bn2", c)
            if block == 0 and stage > 1:
                keys[p + "downsample.0.weight"] = (c, cin, 1, 1)
                bn(p + "downsample.1", c)
        cin = c
    for i in range(layers):
        p = f"encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            keys[f"{p}self_attn.{proj}.weight"] = (d, d)
            keys[f"{p}self_attn.{proj}.bias"] = (d,)
        for norm in ("self_attn_layer_norm", "final_layer_norm"):
            keys[f"{p}{norm}.weight"] = (d,)
            keys[f"{p}{norm}.bias"] = (d,)
        keys[p + "fc1.weight"], keys[p + "fc1.bias"] = (ffn, d), (ffn,)
        keys[p + "fc2.weight"], keys[p + "fc2.bias"] = (d, ffn), (d,)
    return keys


@pytest.mark.parametrize(
    ("config", "layers", "d", "ffn"), [(LARGE, 24, 1024, 4096), (BASE, 12, 768, 3072)]
)
def test_full_size_keys_and_shapes(config: AVHubertConfig, layers: int, d: int, ffn: int) -> None:
    from featstore.encoders.avhubert.model import AVHubertModel

    with torch.device("meta"):
        model = AVHubertModel(config)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == fairseq_keys(layers, d, ffn)
    # and the shapes alone give back the architecture (heads: 64 wide)
    assert config_from_checkpoint({"model": {"layer_norm_first": True}}, shapes=got) == config


def test_registry_import_stays_torch_free() -> None:
    import subprocess

    code = (
        "import sys; from featstore.encoders import specs, get_spec; specs(); "
        "s = get_spec('avhubert-av'); "
        "assert (s.modality, s.crop, s.frame_hz, s.dim, s.n_layers) == ('audiovisual', 'mouth', 25.0, 1024, 24); "
        "assert get_spec('avhubert-a').modality == 'audio' and get_spec('avhubert-v').modality == 'visual'; "
        "import featstore.encoders.checkpoints, featstore.encoders.convert; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
