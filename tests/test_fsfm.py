"""FSFM ViT: checkpoint format, strict loading, pooling and the final norm against references."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from featstore.encoders import CheckpointError, Clip, ClipError, EncoderError, load_encoder, specs  # noqa: E402
from featstore.encoders.fsfm import MEAN, STD, ViTConfig, build_vit  # noqa: E402

TINY = ViTConfig(  # the pre-trained layout (FSFMViT: norm); fine-tuned tests use fc_norm
    img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=1, mlp_dim=32, final_norm="norm"
)
EXTRAS = {  # FSFM pre-training keys, not part of the encoder
    "mask_token": (1, 1, 8),
    "decoder_embed.weight": (8, 8),
    "decoder_blocks.0.norm1.weight": (8,),
    "decoder_pred.weight": (12, 8),
    "rep_decoder_embed.weight": (8, 16),
    "rep_decoder_blocks.0.attn.qkv.weight": (24, 8),
    "projector.projection_head.0.weight": (32, 8),
    "predictor.projection_head.0.weight": (32, 8),
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _state(cfg: ViTConfig, seed: int = 0, *, final: str = "norm") -> dict:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for k, v in build_vit(ViTConfig(**{**cfg.__dict__, "final_norm": final})).state_dict().items():
        base = (
            1.0 if k.endswith("norm.weight") or "norm1.weight" in k or "norm2.weight" in k else 0.0
        )
        state[k] = base + 0.2 * torch.randn(v.shape, generator=gen)
    return state


def _save(path, state, extras=EXTRAS):
    full = dict(state)
    full.update({k: torch.randn(s) for k, s in extras.items()})
    torch.save({"model": full, "epoch": 400}, path)
    return str(path)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("fsfm") / "checkpoint-400.pth", _state(TINY))


def _clips(counts=(5, 3), size=224, seed=0):
    rng = np.random.default_rng(seed)
    return [
        Clip(f"c{i}", frames=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8))
        for i, n in enumerate(counts)
    ]


def _reference_tokens(state: dict, pixels: torch.Tensor, heads: int) -> list[torch.Tensor]:
    """timm's ViT forward, written out: tokens after each block."""
    w = state["patch_embed.proj.weight"]
    x = torch.nn.functional.conv2d(pixels, w, state["patch_embed.proj.bias"], stride=w.shape[-1])
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([state["cls_token"].expand(len(x), -1, -1), x], 1) + state["pos_embed"]
    out = [x]
    d = x.shape[-1]

    def ln(y, p):
        return torch.nn.functional.layer_norm(
            y, (d,), state[p + ".weight"], state[p + ".bias"], 1e-6
        )

    i = 0
    while f"blocks.{i}.norm1.weight" in state:
        p = f"blocks.{i}."
        qkv = ln(x, p + "norm1") @ state[p + "attn.qkv.weight"].T + state[p + "attn.qkv.bias"]
        q, k, v = qkv.chunk(3, dim=-1)
        split = lambda t: t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        a = torch.softmax(q @ k.transpose(-2, -1) / (q.shape[-1] ** 0.5), -1) @ v
        a = a.transpose(1, 2).reshape(x.shape)
        x = x + a @ state[p + "attn.proj.weight"].T + state[p + "attn.proj.bias"]
        h = torch.nn.functional.gelu(
            ln(x, p + "norm2") @ state[p + "mlp.fc1.weight"].T + state[p + "mlp.fc1.bias"]
        )
        x = x + h @ state[p + "mlp.fc2.weight"].T + state[p + "mlp.fc2.bias"]
        out.append(x)
        i += 1
    return out


def _pixels(frames: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def test_spec():
    s = specs()["fsfm"]
    assert (s.modality, s.crop, s.frame_hz, s.dim, s.n_layers) == ("visual", "face", 25.0, 768, 12)


def test_loads_and_lists_pretraining_keys(ckpt):
    enc = load_encoder("fsfm", ckpt)
    assert sorted(enc.unused_keys) == sorted(EXTRAS)
    assert enc.config == TINY and enc.layer_dims == {0: 16, 1: 16, 2: 16, "last": 16}


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_rows_match_reference_pooling(ckpt, pooling):
    enc = load_encoder("fsfm", ckpt, pooling=pooling)
    state = torch.load(ckpt, weights_only=True)["model"]
    clips = _clips((4,), size=32)  # native size: no resize
    rows = enc.encode(clips, "all")[0]
    tokens = _reference_tokens(state, _pixels(clips[0].frames), heads=1)
    pool = (lambda t: t[:, 1:].mean(1)) if pooling == "mean" else (lambda t: t[:, 0])
    for i in range(3):
        np.testing.assert_allclose(rows[i], pool(tokens[i]).numpy(), atol=1e-5, rtol=1e-4)
    normed = torch.nn.functional.layer_norm(
        tokens[-1], (16,), state["norm.weight"], state["norm.bias"], 1e-6
    )
    np.testing.assert_allclose(rows["last"], pool(normed).numpy(), atol=1e-5, rtol=1e-4)


def test_fine_tuned_fc_norm_after_pooling(tmp_path):
    state = _state(TINY, seed=4, final="fc_norm")
    state["head.weight"], state["head.bias"] = torch.randn(2, 16), torch.zeros(2)
    path = _save(tmp_path / "ft.pth", state, extras={})
    enc = load_encoder("fsfm", path)
    assert enc.config.final_norm == "fc_norm" and sorted(enc.unused_keys) == [
        "head.bias",
        "head.weight",
    ]
    clips = _clips((3,), size=32)
    rows = enc.encode(clips, ["last"])[0]["last"]
    tokens = _reference_tokens(state, _pixels(clips[0].frames), heads=1)
    want = torch.nn.functional.layer_norm(
        tokens[-1][:, 1:].mean(1), (16,), state["fc_norm.weight"], state["fc_norm.bias"], 1e-6
    )
    np.testing.assert_allclose(rows, want.numpy(), atol=1e-5, rtol=1e-4)


def test_resize_batches_and_errors(ckpt):
    enc = load_encoder("fsfm", ckpt, frames_per_batch=2)
    clips = _clips()
    batch = enc.encode(clips, "all")
    for clip, rows in zip(clips, batch, strict=True):
        assert all(
            x.shape == (len(clip.frames), 16) and x.dtype == np.float32 for x in rows.values()
        )
        alone = load_encoder("fsfm", ckpt).encode([clip], "all")[0]
        for k in alone:
            np.testing.assert_allclose(alone[k], rows[k], atol=1e-5, rtol=1e-4)
    with pytest.raises(ClipError):
        enc.encode([Clip("grey", frames=np.zeros((2, 96, 96), np.uint8))], ["last"])
    with pytest.raises(ClipError):
        enc.encode([Clip("none", audio=np.zeros(16000, np.float32))], ["last"])
    with pytest.raises(EncoderError):
        load_encoder("fsfm", ckpt, pooling="max")


@pytest.mark.parametrize("change", ["missing", "unexpected", "shape", "no_blocks"])
def test_strict_loading(tmp_path, change):
    state = _state(TINY)
    if change == "missing":
        del state["blocks.1.mlp.fc2.bias"]
    elif change == "unexpected":
        state["blocks.0.attn.q_norm.weight"] = torch.ones(16)
    elif change == "shape":
        state["norm.bias"] = torch.zeros(17)
    else:
        state = {k: v for k, v in state.items() if not k.startswith("blocks.0.")}
    with pytest.raises(CheckpointError):
        load_encoder("fsfm", _save(tmp_path / "bad.pth", state))


def test_random_init_and_converted_round_trip(ckpt, tmp_path):
    from featstore.encoders.convert import convert_encoder

    rnd = load_encoder("fsfm", ckpt, random_init=True)
    assert rnd.random_init and rnd.checkpoint_sha256 is None
    assert rnd.config == TINY and rnd.unused_keys == []  # the checkpoint's architecture
    assert torch.all(rnd.model.norm.weight == 1)  # FSFM's scheme: test_random_init.py
    out = convert_encoder("fsfm", ckpt, tmp_path / "conv")
    a, b = load_encoder("fsfm", ckpt), load_encoder("fsfm", str(out))
    clips = _clips((2,))
    x, y = a.encode(clips, "all")[0], b.encode(clips, "all")[0]
    for k in x:
        np.testing.assert_array_equal(x[k], y[k])


def test_full_size_state_dict():
    with torch.device("meta"):
        vit = build_vit(ViTConfig())
    got = {k: tuple(v.shape) for k, v in vit.state_dict().items()}
    want = {
        "patch_embed.proj.weight": (768, 3, 16, 16),
        "patch_embed.proj.bias": (768,),
        "cls_token": (1, 1, 768),
        "pos_embed": (1, 197, 768),
        "fc_norm.weight": (768,),  # the default (fine-tuned) architecture
        "fc_norm.bias": (768,),
    }
    for i in range(12):
        p = f"blocks.{i}."
        want |= {p + "norm1.weight": (768,), p + "norm1.bias": (768,)}
        want |= {p + "norm2.weight": (768,), p + "norm2.bias": (768,)}
        want |= {p + "attn.qkv.weight": (2304, 768), p + "attn.qkv.bias": (2304,)}
        want |= {p + "attn.proj.weight": (768, 768), p + "attn.proj.bias": (768,)}
        want |= {p + "mlp.fc1.weight": (3072, 768), p + "mlp.fc1.bias": (3072,)}
        want |= {p + "mlp.fc2.weight": (768, 3072), p + "mlp.fc2.bias": (768,)}
    assert got == want


def test_fine_tuned_default_checkpoint(tmp_path, monkeypatch):
    """``FF++_c23_32frames/checkpoint-min_val_loss.pth`` as ``main_finetune_DfD.py`` saves it
    (model, optimizer, epoch, scaler, an argparse Namespace), found by its default name in
    the checkpoint directory; ``last`` = fc_norm of the mean patch token, CLS excluded."""
    from featstore.encoders.checkpoints import CHECKPOINT_DIR_ENV, load_checkpoint, plain
    from featstore.encoders.fsfm import DEFAULT_CHECKPOINT, PRETRAINED_CHECKPOINT
    from featstore.encoders.fsfm_tiny import save_tiny_checkpoint

    monkeypatch.setenv(CHECKPOINT_DIR_ENV, str(tmp_path))
    path = save_tiny_checkpoint(tmp_path / DEFAULT_CHECKPOINT, seed=3)
    raw = load_checkpoint(path)
    assert set(raw) == {"model", "optimizer", "epoch", "scaler", "args"}
    assert plain(raw["args"])["global_pool"] is True
    enc = load_encoder("fsfm")  # the default
    assert enc.checkpoint == DEFAULT_CHECKPOINT and enc.layout == "fine-tuned"
    assert enc.unused_keys == ["head.bias", "head.weight"]
    assert enc.info().extra["fsfm_layout"] == "fine-tuned"
    state = raw["model"]
    clips = _clips((3,), size=224)  # the tiny model's native size
    rows = enc.encode(clips, [1, "last"])[0]
    tokens = _reference_tokens(state, _pixels(clips[0].frames), heads=1)
    np.testing.assert_allclose(rows[1], tokens[1][:, 1:].mean(1).numpy(), atol=1e-5, rtol=1e-4)
    want = torch.nn.functional.layer_norm(
        tokens[-1][:, 1:].mean(1), (16,), state["fc_norm.weight"], state["fc_norm.bias"], 1e-6
    )
    np.testing.assert_allclose(rows["last"], want.numpy(), atol=1e-5, rtol=1e-4)
    # the documented alternative, the VGGFace2 pre-training, by its name
    save_tiny_checkpoint(tmp_path / PRETRAINED_CHECKPOINT, layout="pre-trained")
    pre = load_encoder("fsfm", PRETRAINED_CHECKPOINT)
    assert pre.layout == "pre-trained" and "mask_token" in pre.unused_keys


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("pretraining_extra", "1 unexpected: mask_token"),
        ("norm_beside_fc_norm", "2 unexpected: norm.bias, norm.weight"),
        ("missing_fc_norm", "1 missing: fc_norm.bias"),
        ("missing_block", "1 missing: blocks.1.attn.proj.weight"),
        ("head_shape_is_free", None),
        ("no_head", None),
    ],
)
def test_fine_tuned_layout_is_strict(tmp_path, change, message):
    state = _state(TINY, seed=5, final="fc_norm")
    state["head.weight"], state["head.bias"] = torch.randn(2, 16), torch.zeros(2)
    if change == "pretraining_extra":
        state["mask_token"] = torch.zeros(1, 1, 16)  # FSFMViT's, never in models_vit
    elif change == "norm_beside_fc_norm":
        state["norm.weight"], state["norm.bias"] = torch.ones(16), torch.zeros(16)
    elif change == "missing_fc_norm":
        del state["fc_norm.bias"]
    elif change == "missing_block":
        del state["blocks.1.attn.proj.weight"]
    elif change == "head_shape_is_free":
        state["head.weight"], state["head.bias"] = torch.randn(4, 16), torch.zeros(4)
    else:
        del state["head.weight"], state["head.bias"]
    path = _save(tmp_path / "ft.pth", state, extras={})
    if message is None:
        enc = load_encoder("fsfm", path)
        assert enc.layout == "fine-tuned"
        assert enc.unused_keys == ([] if change == "no_head" else ["head.bias", "head.weight"])
        return
    with pytest.raises(CheckpointError, match=message):
        load_encoder("fsfm", path)
