"""Auto-AVSR: checkpoint layouts, strict loading, pieces against reference computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from featstore.encoders import CheckpointError, Clip, ClipError, EncoderError, load_encoder, specs  # noqa: E402
from featstore.encoders.autoavsr.config import default_config  # noqa: E402
from featstore.encoders.autoavsr.conformer import (  # noqa: E402
    ConvolutionModule,
    RelPositionMultiHeadedAttention,
    rel_positions,
)
from featstore.encoders.autoavsr.model import build_model  # noqa: E402
from featstore.encoders.autoavsr.tiny import save_tiny_checkpoint  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _clips(n_frames=(14, 9), seed=0, audio_extra=100):
    rng = np.random.default_rng(seed)
    return [
        Clip(
            f"c{i}",
            frames=rng.integers(0, 256, (n, 96, 96), dtype=np.uint8),
            audio=(0.3 * rng.standard_normal(n * 640 + audio_extra)).astype(np.float32),
        )
        for i, n in enumerate(n_frames)
    ]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("autoavsr")
    return {
        "vsr": save_tiny_checkpoint("autoavsr-vsr", d / "v.pth", seed=1),
        "vsr-legacy": save_tiny_checkpoint("autoavsr-vsr", d / "vl.pth", seed=1, layout="legacy"),
        "asr": save_tiny_checkpoint("autoavsr-asr", d / "a.pth", seed=2),
        "avsr": save_tiny_checkpoint("autoavsr-avsr", d / "av.pth", seed=3),
    }


# ---------------------------------------------------------------- reference computations


def test_rel_attention_matches_explicit_loop():
    torch.manual_seed(0)
    d, h, t = 8, 2, 6
    att = RelPositionMultiHeadedAttention(h, d).eval()
    with torch.no_grad():
        att.pos_bias_u.normal_()
        att.pos_bias_v.normal_()
    x = torch.randn(1, t, d)
    with torch.no_grad():
        got = att(x, rel_positions(t, d), None)[0]
        dk = d // h
        q, k, v = (lin(x[0]).view(t, h, dk) for lin in (att.linear_q, att.linear_k, att.linear_v))
        freq = [10000 ** (-(2 * i) / d) for i in range(d // 2)]

        def pe(r: int) -> torch.Tensor:  # sinusoid of relative offset r = query - key
            e = torch.zeros(d)
            for i, w in enumerate(freq):
                e[2 * i], e[2 * i + 1] = math.sin(r * w), math.cos(r * w)
            return e

        out = torch.zeros(t, h, dk)
        for head in range(h):
            for i in range(t):
                scores = torch.zeros(t)
                for j in range(t):
                    p = att.linear_pos(pe(i - j)).view(h, dk)[head]
                    scores[j] = (q[i, head] + att.pos_bias_u[head]) @ k[j, head] + (
                        q[i, head] + att.pos_bias_v[head]
                    ) @ p
                w = torch.softmax(scores / math.sqrt(dk), dim=0)
                out[i, head] = w @ v[:, head]
        want = att.linear_out(out.reshape(t, d))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_rel_attention_key_mask_equals_unpadded():
    torch.manual_seed(1)
    att = RelPositionMultiHeadedAttention(2, 8).eval()
    with torch.no_grad():
        att.pos_bias_u.normal_()
        att.pos_bias_v.normal_()
    x = torch.randn(1, 7, 8)
    padded = torch.cat([x, torch.randn(1, 3, 8)], dim=1)
    mask = torch.arange(10)[None] < 7
    with torch.no_grad():
        alone = att(x, rel_positions(7, 8), None)
        batch = att(padded, rel_positions(10, 8), mask)
    torch.testing.assert_close(batch[:, :7], alone, atol=1e-5, rtol=1e-4)


def test_conv_module_matches_reference():
    torch.manual_seed(2)
    c, kernel, t = 4, 5, 9
    conv = ConvolutionModule(c, kernel).eval()
    with torch.no_grad():
        conv.norm.running_mean.normal_()
        conv.norm.running_var.uniform_(0.5, 2.0)
        conv.norm.weight.normal_()
        conv.norm.bias.normal_()
    x = torch.randn(1, t, c)
    with torch.no_grad():
        got = conv(x)[0]  # [T, C]
        y = x[0] @ conv.pointwise_cov1.weight[:, :, 0].T + conv.pointwise_cov1.bias  # [T, 2C]
        y = y[:, :c] * torch.sigmoid(y[:, c:])  # GLU
        z = torch.zeros(t, c)
        for ti in range(t):
            for tap in range(kernel):
                src = ti + tap - kernel // 2
                if 0 <= src < t:
                    z[ti] += y[src] * conv.depthwise_conv.weight[:, 0, tap]
        z += conv.depthwise_conv.bias
        bn = conv.norm
        z = (z - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
        z = z * torch.sigmoid(z)
        want = z @ conv.pointwise_cov2.weight[:, :, 0].T + conv.pointwise_cov2.bias
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    # padded steps behave as the convolution's own zero padding
    padded = torch.cat([x, 5 + torch.randn(1, 4, c)], dim=1)
    with torch.no_grad():
        masked = conv(padded, torch.arange(t + 4)[None] < t)[0, :t]
    torch.testing.assert_close(masked, got, atol=1e-5, rtol=1e-4)


def test_old_layout_fusion_matches_reference(ckpts):
    av = load_encoder("autoavsr-avsr", str(ckpts["avsr"]))
    clips = _clips((11,))
    rows = av.encode(clips, "all")[0]
    sd = torch.load(ckpts["avsr"], weights_only=True)
    model = av.model
    # run the two branches directly (their own front ends), video first as Auto-AVSR does
    with torch.no_grad():
        v_in = torch.from_numpy(av._video(clips[0]))[None]
        a_in = torch.from_numpy(av._audio(clips[0], 11))[None]
        v_states, v_last = model.video(model.video.frontend(v_in), None)
        a_states, a_last = model.audio(model.audio.frontend(a_in), None)
        x = torch.cat([v_last, a_last], dim=-1)[0]
        x = x @ sd["fusion.fc1.weight"].T + sd["fusion.fc1.bias"]
        x = (x - sd["fusion.bn1.running_mean"]) / torch.sqrt(sd["fusion.bn1.running_var"] + 1e-5)
        x = torch.relu(x * sd["fusion.bn1.weight"] + sd["fusion.bn1.bias"])
        want = x @ sd["fusion.fc2.weight"].T + sd["fusion.fc2.bias"]
    np.testing.assert_allclose(rows["last"], want.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(
        rows[2], torch.cat([v_states[2], a_states[2]], -1)[0].numpy(), atol=1e-5, rtol=1e-4
    )


def test_av_branches_equal_single_modality_models(ckpts, tmp_path):
    """The legacy AV checkpoint's 'encoder' / 'aux_encoder', saved as current-layout
    single models, give the AV model's branch outputs (layers 0..n)."""
    sd = torch.load(ckpts["avsr"], weights_only=True)
    video = {k[len("encoder.") :]: v for k, v in sd.items() if k.startswith("encoder.")}
    video = {
        (
            "frontend." + k[len("frontend.") :]
            if k.startswith("frontend.")
            else "proj_encoder." + k[len("embed.0.") :]
            if k.startswith("embed.0.")
            else "encoder." + k
        ): v
        for k, v in video.items()
    }
    torch.save(video, tmp_path / "v.pth")
    vsr = load_encoder("autoavsr-vsr", str(tmp_path / "v.pth"))
    av = load_encoder("autoavsr-avsr", str(ckpts["avsr"]))
    clips = _clips((10,))
    a, b = vsr.encode(clips, "all")[0], av.encode(clips, "all")[0]
    for k in range(3):
        np.testing.assert_allclose(b[k][:, :16], a[k], atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- loading and strictness


def test_specs_registered():
    s = specs()
    for name, modality in [
        ("autoavsr-asr", "audio"),
        ("autoavsr-vsr", "visual"),
        ("autoavsr-avsr", "audiovisual"),
    ]:
        assert s[name].modality == modality and s[name].frame_hz == 25.0
        assert s[name].dim == 768 and s[name].n_layers == 12 and s[name].crop == "mouth"


def test_tiny_checkpoint_keys_are_the_original_names(ckpts):
    cur = torch.load(ckpts["vsr"], weights_only=True)
    assert "frontend.frontend3D.0.weight" in cur and "proj_encoder.weight" in cur
    assert "encoder.encoders.1.conv_module.pointwise_cov1.weight" in cur
    assert "encoder.after_norm.weight" in cur and "ctc.ctc_lo.weight" in cur
    old = torch.load(ckpts["avsr"], weights_only=True)
    for key in (
        "encoder.frontend.trunk.layer1.0.conv1.weight",
        "encoder.embed.0.weight",
        "aux_encoder.frontend.trunk.conv1.weight",
        "aux_encoder.embed.0.weight",
        "aux_encoder.encoders.1.self_attn.pos_bias_u",
        "fusion.fc1.weight",
        "fusion.bn1.running_var",
        "fusion.fc2.weight",
    ):
        assert key in old, key


def test_layouts_give_identical_rows_and_unused_keys(ckpts):
    cur = load_encoder("autoavsr-vsr", str(ckpts["vsr"]))
    old = load_encoder("autoavsr-vsr", str(ckpts["vsr-legacy"]))
    assert sorted(cur.unused_keys) == sorted(old.unused_keys)
    assert {k.split(".")[0] for k in cur.unused_keys} == {"decoder", "ctc"}
    clips = _clips()
    a, b = cur.encode(clips, "all"), old.encode(clips, "all")
    for x, y in zip(a, b, strict=True):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


@pytest.mark.parametrize("change", ["missing", "unexpected", "shape", "modality", "foreign"])
def test_strict_loading(ckpts, tmp_path, change):
    name = "autoavsr-vsr"
    sd = torch.load(ckpts["vsr"], weights_only=True)
    if change == "missing":
        del sd["encoder.encoders.0.self_attn.linear_pos.weight"]
    elif change == "unexpected":
        sd["encoder.encoders.0.self_attn.extra"] = torch.zeros(2)
    elif change == "shape":
        sd["encoder.after_norm.weight"] = torch.ones(17)
    elif change == "modality":
        name = "autoavsr-asr"
    else:
        sd = {"model": {"w": torch.zeros(1)}}
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError):
        load_encoder(name, str(tmp_path / "bad.pth"))


def test_legacy_pe_table_is_ignored(ckpts, tmp_path):
    sd = torch.load(ckpts["vsr-legacy"], weights_only=True)
    sd["encoder.embed.1.pe"] = torch.zeros(1, 50, 16)
    torch.save(sd, tmp_path / "pe.pth")
    enc = load_encoder("autoavsr-vsr", str(tmp_path / "pe.pth"))
    assert "encoder.embed.1.pe" in enc.unused_keys


# ---------------------------------------------------------------- encoding


@pytest.mark.parametrize("kind", ["vsr", "asr", "avsr"])
def test_encode_rows_and_padding_safety(ckpts, kind):
    enc = load_encoder(f"autoavsr-{kind}", str(ckpts[kind]))
    clips = _clips()
    batch = enc.encode(clips, "all")
    for clip, rows in zip(clips, batch, strict=True):
        n = clip.frames.shape[0]
        assert set(rows) == {0, 1, 2, "last"}
        for k, x in rows.items():
            assert x.shape == (n, enc.layer_dims[k]) and x.dtype == np.float32
            assert np.isfinite(x).all()
        alone = enc.encode([clip], [2, "last"])[0]
        for k in alone:
            np.testing.assert_allclose(alone[k], rows[k], atol=1e-5, rtol=1e-4)
    assert enc.layer_dims["last"] == 16
    assert enc.layer_dims[0] == (32 if kind == "avsr" else 16)


def test_audio_preprocessing_and_rows(ckpts):
    enc = load_encoder("autoavsr-asr", str(ckpts["asr"]))
    rng = np.random.default_rng(5)
    audio = rng.standard_normal(640 * 7 + 639).astype(np.float32)
    rows = enc.encode([Clip("a", audio=audio)], ["last"])[0]["last"]
    assert rows.shape[0] == 7  # a partial last step is dropped
    # layer norm over the whole clip: scale and offset of the waveform do not matter
    again = enc.encode([Clip("a", audio=3 * audio + 0.5)], ["last"])[0]["last"]
    np.testing.assert_allclose(rows, again, atol=1e-4, rtol=1e-3)
    with pytest.raises(ClipError):
        enc.encode([Clip("short", audio=audio[:600])], ["last"])
    with pytest.raises(ClipError):
        enc.encode([Clip("none", frames=np.zeros((5, 96, 96), np.uint8))], ["last"])


def test_av_audio_cut_or_pad_to_video(ckpts):
    enc = load_encoder("autoavsr-avsr", str(ckpts["avsr"]))
    (clip,) = _clips((8,), audio_extra=0)
    short = Clip("s", frames=clip.frames, audio=clip.audio[: 640 * 5])
    rows = enc.encode([clip, short], ["last", 1])
    assert rows[0]["last"].shape == (8, 16) and rows[1]["last"].shape == (8, 16)
    longer = Clip("l", frames=clip.frames, audio=np.concatenate([clip.audio, clip.audio]))
    np.testing.assert_allclose(
        enc.encode([longer], ["last"])[0]["last"], rows[0]["last"], atol=1e-5, rtol=1e-4
    )


def test_video_input_errors(ckpts):
    enc = load_encoder("autoavsr-vsr", str(ckpts["vsr"]))
    with pytest.raises(ClipError):
        enc.encode([Clip("rgb", frames=np.zeros((4, 96, 96, 3), np.uint8))], ["last"])
    with pytest.raises(ClipError):
        enc.encode([Clip("small", frames=np.zeros((4, 80, 80), np.uint8))], ["last"])
    with pytest.raises(EncoderError):
        enc.encode(_clips((4,)), [7])


def test_random_init_uses_checkpoint_architecture(ckpts):
    enc = load_encoder("autoavsr-vsr", str(ckpts["vsr"]), random_init=True)
    assert enc.random_init and enc.checkpoint_sha256 is None
    assert enc.layer_dims["last"] == 16
    assert enc.info().extra["random_init_scheme"] == "autoavsr-pytorch"  # test_random_init.py
    norm = enc.model.encoder.after_norm
    assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)


def test_converted_round_trip(ckpts, tmp_path):
    from featstore.encoders.convert import convert_encoder

    out = convert_encoder("autoavsr-avsr", str(ckpts["avsr"]), tmp_path / "conv")
    a = load_encoder("autoavsr-avsr", str(ckpts["avsr"]))
    b = load_encoder("autoavsr-avsr", str(out))
    clips = _clips()
    for x, y in zip(a.encode(clips, "all"), b.encode(clips, "all"), strict=True):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    with pytest.raises(CheckpointError):
        load_encoder("autoavsr-vsr", str(out))  # an audio-visual model


# ---------------------------------------------------------------- full size, no forward


def _expected_branch(frontend: str) -> dict[str, tuple[int, ...]]:
    """Auto-AVSR's published branch, written out by hand: key -> shape."""
    e: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, c: int) -> None:
        for s in ("weight", "bias", "running_mean", "running_var"):
            e[f"{prefix}.{s}"] = (c,)
        e[f"{prefix}.num_batches_tracked"] = ()

    video = frontend == "video"
    k = (3, 3) if video else (3,)
    if video:
        e["frontend.frontend3D.0.weight"] = (64, 1, 5, 7, 7)
        bn("frontend.frontend3D.1", 64)
    else:
        e["frontend.trunk.conv1.weight"] = (64, 1, 80)
        bn("frontend.trunk.bn1", 64)
    inp = 64
    for stage, c in enumerate((64, 128, 256, 512), start=1):
        for b in range(2):
            p = f"frontend.trunk.layer{stage}.{b}"
            e[f"{p}.conv1.weight"] = (c, inp if b == 0 else c, *k)
            bn(f"{p}.bn1", c)
            e[f"{p}.conv2.weight"] = (c, c, *k)
            bn(f"{p}.bn2", c)
            if b == 0 and stage > 1:
                e[f"{p}.downsample.0.weight"] = (c, inp, *((1, 1) if video else (1,)))
                bn(f"{p}.downsample.1", c)
        inp = c
    e["proj_encoder.weight"], e["proj_encoder.bias"] = (768, 512), (768,)
    for i in range(12):
        p = f"encoder.encoders.{i}"
        for lin in ("q", "k", "v", "out"):
            e[f"{p}.self_attn.linear_{lin}.weight"] = (768, 768)
            e[f"{p}.self_attn.linear_{lin}.bias"] = (768,)
        e[f"{p}.self_attn.linear_pos.weight"] = (768, 768)
        e[f"{p}.self_attn.pos_bias_u"] = e[f"{p}.self_attn.pos_bias_v"] = (12, 64)
        for ff in ("feed_forward", "feed_forward_macaron"):
            e[f"{p}.{ff}.w_1.weight"], e[f"{p}.{ff}.w_1.bias"] = (3072, 768), (3072,)
            e[f"{p}.{ff}.w_2.weight"], e[f"{p}.{ff}.w_2.bias"] = (768, 3072), (768,)
        cm = f"{p}.conv_module"
        e[f"{cm}.pointwise_cov1.weight"], e[f"{cm}.pointwise_cov1.bias"] = (1536, 768, 1), (1536,)
        e[f"{cm}.depthwise_conv.weight"], e[f"{cm}.depthwise_conv.bias"] = (768, 1, 31), (768,)
        bn(f"{cm}.norm", 768)
        e[f"{cm}.pointwise_cov2.weight"], e[f"{cm}.pointwise_cov2.bias"] = (768, 768, 1), (768,)
        for n in ("ff", "mha", "ff_macaron", "conv", "final"):
            e[f"{p}.norm_{n}.weight"] = e[f"{p}.norm_{n}.bias"] = (768,)
    e["encoder.after_norm.weight"] = e["encoder.after_norm.bias"] = (768,)
    return e


@pytest.mark.parametrize("modality", ["audio", "visual", "audiovisual"])
def test_full_size_state_dict(modality):
    with torch.device("meta"):
        model = build_model(default_config(modality))
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if modality == "audiovisual":
        want = {f"video.{k}": s for k, s in _expected_branch("video").items()}
        want |= {f"audio.{k}": s for k, s in _expected_branch("audio").items()}
        want |= {"fusion.fc1.weight": (8192, 1536), "fusion.fc1.bias": (8192,)}
        want |= {
            f"fusion.bn1.{s}": (8192,) for s in ("weight", "bias", "running_mean", "running_var")
        }
        want |= {"fusion.bn1.num_batches_tracked": (), "fusion.fc2.weight": (768, 8192)}
        want |= {"fusion.fc2.bias": (768,)}
    else:
        want = _expected_branch("video" if modality == "visual" else "audio")
    assert got == want


@pytest.mark.slow
def test_random_init_full_size_without_checkpoint():
    enc = load_encoder("autoavsr-vsr", random_init=True)  # default file absent
    assert enc.layer_dims == {**dict.fromkeys(range(13), 768), "last": 768}
    rows = enc.encode(_clips((3,)), ["last", 12])[0]
    assert rows["last"].shape == (3, 768) and np.isfinite(rows["last"]).all()
