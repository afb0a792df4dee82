"""Random-init baselines: each architecture's own initialisation, per layer type.

Every expected value is the formula the original code uses, written out here (not
read from featstore): transformers 5's ``_init_weights`` (wav2vec2, CLIP, VideoMAE),
AV-HuBERT's ``resnet.py`` / ``hubert.py`` and fairseq's ``TransformerEncoder`` /
``init_bert_params``, Auto-AVSR's espnet modules (PyTorch defaults, xavier position
biases), FSFM's MAE ``initialize_weights``. Statistics are pooled over a layer type
and standardised by the expected scale, then checked for spread (std within 15%),
shape (a uniform never exceeds its bound; a normal sample of hundreds does exceed
sqrt(3) std) and exact values where the scheme is exact (norms, zero biases,
sin-cos tables, weight norm's g).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from featstore.encoders import EncoderError, get_spec, load_encoder  # noqa: E402
from featstore.encoders.random_init import SEED  # noqa: E402
from featstore.encoders.tiny import save_tiny_checkpoint as save_hf  # noqa: E402
from featstore.store import EncoderInfo  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------ statistics helpers


def _flat(tensors: Iterable[torch.Tensor], scales: Iterable[float]) -> torch.Tensor:
    """Tensors divided by their expected scale, pooled into one float64 vector."""
    parts = [t.detach().double().flatten() / s for t, s in zip(tensors, scales, strict=True)]
    assert parts, "no parameters of this type"
    return torch.cat(parts)


def assert_normal(tensors: list[torch.Tensor], stds: list[float], *, what: str) -> None:
    """Each tensor ~ N(0, std): pooled z-scores have std 1, mean 0 and normal tails."""
    z = _flat(tensors, stds)
    n = z.numel()
    assert n >= 64, f"{what}: too few values ({n}) for a statistic"
    assert abs(z.std().item() - 1) < 0.15, f"{what}: std/expected = {z.std().item():.3f}"
    assert abs(z.mean().item()) < 5 / math.sqrt(n), f"{what}: mean {z.mean().item():.3f}"
    if n >= 300:  # a uniform of the same std never passes sqrt(3)
        assert z.abs().max().item() > 1.9, f"{what}: no normal tail (uniform?)"


def assert_uniform(tensors: list[torch.Tensor], bounds: list[float], *, what: str) -> None:
    """Each tensor ~ U(-bound, bound): within the bound, std bound / sqrt(3)."""
    u = _flat(tensors, bounds)
    assert u.numel() >= 16, what
    assert u.abs().max().item() <= 1 + 1e-6, f"{what}: beyond the bound"
    assert abs(u.std().item() * math.sqrt(3) - 1) < 0.15, f"{what}: std {u.std().item():.3f}"


def assert_norms_one_zero(model: nn.Module) -> None:
    """LayerNorm/GroupNorm/BatchNorm: weight 1, bias 0 (BatchNorm stats 0 and 1)."""
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm | nn.GroupNorm)]
    norms += [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms
    for m in norms:
        assert torch.all(m.weight == 1) and torch.all(m.bias == 0), m
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            assert torch.all(m.running_mean == 0) and torch.all(m.running_var == 1)


def default_bound(m: nn.Module) -> float:
    """PyTorch's default Linear/Conv init: kaiming_uniform(a=sqrt(5)) = U(±1/sqrt(fan_in))."""
    return 1 / math.sqrt(m.weight[0].numel())


def assert_pytorch_default(modules: list[nn.Module], *, what: str) -> None:
    assert_uniform([m.weight for m in modules], [default_bound(m) for m in modules], what=what)
    biased = [m for m in modules if m.bias is not None]
    if biased:
        assert_uniform([m.bias for m in biased], [default_bound(m) for m in biased], what=what)


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def check_recorded(encoder, scheme: str) -> None:
    """What the store records (EncoderInfo attrs) names the scheme and its seed."""
    info = EncoderInfo.from_attrs(encoder.info().to_attrs())
    assert info.random_init
    assert info.extra["random_init_scheme"] == scheme
    assert info.extra["random_init_seed"] == SEED


# ------------------------------------------------------------------ Hugging Face


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {
        name: str(save_hf(name, root / name, weights=False))
        for name in ("wav2vec2", "clip", "videomae")
    }


def test_wav2vec2_own_init(hf_dirs):
    """transformers 5 Wav2Vec2PreTrainedModel._init_weights (fairseq's wav2vec 2.0 scheme);
    the positional conv as that method states it, which transformers itself loses."""
    enc = load_encoder("wav2vec2", hf_dirs["wav2vec2"], random_init=True)
    model, cfg = enc.model, enc.model.config
    check_recorded(enc, "wav2vec2-hf")
    pos = model.encoder.pos_conv_embed.conv
    k, c = pos.kernel_size[0], pos.in_channels
    convs = [layer.conv for layer in model.feature_extractor.conv_layers]
    linears = [
        m
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and name.startswith("encoder.")
    ]
    projection = model.feature_projection.projection
    assert_normal(
        [m.weight for m in linears], [cfg.initializer_range] * len(linears), what="Linear"
    )
    assert all(torch.all(m.bias == 0) for m in linears)
    bound = 1 / math.sqrt(projection.in_features)
    assert_uniform([projection.weight, projection.bias], [bound, bound], what="projection")
    fan_ins = [m.in_channels * m.kernel_size[0] for m in convs]
    assert_normal(
        [m.weight for m in convs], [math.sqrt(2 / f) for f in fan_ins], what="conv (He normal)"
    )
    weight = pos.weight.detach()  # the effective (weight-normed) weight
    assert_normal([weight], [2 * math.sqrt(1 / (k * c))], what="positional conv")
    g = pos.parametrizations.weight.original0.detach()
    torch.testing.assert_close(g, torch.norm_except_dim(weight, 2, 2))
    assert torch.all(pos.bias == 0)
    assert_norms_one_zero(model)


def test_clip_own_init(hf_dirs):
    """transformers CLIPPreTrainedModel._init_weights with initializer_factor 1."""
    enc = load_encoder("clip", hf_dirs["clip"], random_init=True)
    model, cfg = enc.model, enc.model.config
    check_recorded(enc, "clip-hf")
    d, n_layers, f = cfg.hidden_size, cfg.num_hidden_layers, cfg.initializer_factor
    emb = model.vision_model.embeddings
    layers = model.vision_model.encoder.layers
    in_std = d**-0.5 * (2 * n_layers) ** -0.5 * f
    qkv = [getattr(layer.self_attn, p) for layer in layers for p in ("q_proj", "k_proj", "v_proj")]
    assert_normal([m.weight for m in qkv], [in_std] * len(qkv), what="q/k/v")
    outs = [layer.self_attn.out_proj for layer in layers]
    assert_normal([m.weight for m in outs], [d**-0.5 * f] * len(outs), what="out_proj")
    fc1 = [layer.mlp.fc1 for layer in layers]
    assert_normal([m.weight for m in fc1], [(2 * d) ** -0.5 * f] * len(fc1), what="fc1")
    fc2 = [layer.mlp.fc2 for layer in layers]
    assert_normal([m.weight for m in fc2], [in_std] * len(fc2), what="fc2")
    assert all(torch.all(m.bias == 0) for m in qkv + outs + fc1 + fc2)
    assert_normal([model.visual_projection.weight], [d**-0.5 * f], what="visual_projection")
    assert_normal(
        [emb.patch_embedding.weight, emb.position_embedding.weight],
        [cfg.initializer_range * f] * 2,
        what="patch/position embeddings",
    )
    # 32 values: a loose check of N(0, D^-0.5)
    assert abs(emb.class_embedding.std().item() / (d**-0.5 * f) - 1) < 0.5
    assert_norms_one_zero(model)


def test_videomae_own_init(hf_dirs):
    """transformers PreTrainedModel._init_weights: Linear and Conv3d N(0, 0.02), bias 0."""
    enc = load_encoder("videomae", hf_dirs["videomae"], random_init=True)
    model, cfg = enc.model, enc.model.config
    check_recorded(enc, "videomae-hf")
    mods = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv3d)]
    assert_normal(
        [m.weight for m in mods], [cfg.initializer_range] * len(mods), what="Linear/Conv3d"
    )
    assert all(m.bias is None or torch.all(m.bias == 0) for m in mods)
    assert_norms_one_zero(model)


def test_hf_init_runs_in_transformers_itself(hf_dirs):
    """The native scheme is what ``model_cls(config)`` builds (post_init runs the model's
    ``_init_weights``): the same seed gives CLIP's weights exactly, with nothing of ours."""
    import transformers

    enc = load_encoder("clip", hf_dirs["clip"], random_init=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        reference = transformers.CLIPVisionModelWithProjection(enc.model.config)
    assert_same_weights(enc.model, reference)


# ------------------------------------------------------------------ AV-HuBERT


@pytest.fixture(scope="module")
def avhubert_ckpt(tmp_path_factory):
    from featstore.encoders.avhubert.tiny import save_tiny_checkpoint

    return str(save_tiny_checkpoint(tmp_path_factory.mktemp("avh") / "avh.pt"))


def test_avhubert_own_init(avhubert_ckpt):
    """AV-HuBERT's from-scratch model: resnet.py He-normal trunk, PyTorch-default stem and
    front-end projections, fairseq's encoder (init_bert_params, positional conv)."""
    enc = load_encoder("avhubert-av", avhubert_ckpt, random_init=True)
    model, cfg = enc.model, enc.config
    check_recorded(enc, "avhubert-fairseq")
    video = model.feature_extractor_video
    stem = video.resnet.frontend3D[0]
    assert stem.bias is None
    assert_pytorch_default([stem], what="3-D stem conv")
    trunk = [m for m in video.resnet.trunk.modules() if isinstance(m, nn.Conv2d)]
    assert_normal(
        [m.weight for m in trunk],
        [math.sqrt(2 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)) for m in trunk],
        what="ResNet trunk conv",
    )
    fronts = [model.feature_extractor_audio.proj, video.proj, model.post_extract_proj]
    assert_pytorch_default(fronts, what="front-end projections")
    encoder_linears = [m for m in model.encoder.modules() if isinstance(m, nn.Linear)]
    assert_normal(
        [m.weight for m in encoder_linears], [0.02] * len(encoder_linears), what="encoder Linear"
    )
    assert all(torch.all(m.bias == 0) for m in encoder_linears)
    conv = model.encoder.pos_conv[0]
    v = conv.weight_v.detach()  # [D, D / groups, K]
    assert_normal([v], [math.sqrt(4 / (cfg.conv_pos * cfg.encoder_embed_dim))], what="pos conv")
    torch.testing.assert_close(conv.weight().detach(), v)  # g = ||v||: the weight is the draw
    assert torch.all(conv.bias == 0)
    prelu = [m for m in model.modules() if isinstance(m, nn.PReLU)]
    assert prelu and all(torch.all(m.weight == 0.25) for m in prelu)
    assert_norms_one_zero(model)


def test_avhubert_bert_option(avhubert_ckpt):
    """The former scheme, kept as a named option: every Linear/conv N(0, 0.02)."""
    enc = load_encoder("avhubert-av", avhubert_ckpt, random_init=True, random_init_scheme="bert")
    check_recorded(enc, "bert")
    model = enc.model
    fronts = [model.feature_extractor_audio.proj, model.feature_extractor_video.proj]
    assert_normal([m.weight for m in fronts], [0.02, 0.02], what="front-end (bert)")
    assert_normal([model.encoder.pos_conv[0].weight().detach()], [0.02], what="pos conv (bert)")
    native = load_encoder("avhubert-av", avhubert_ckpt, random_init=True)
    assert not torch.equal(model.post_extract_proj.weight, native.model.post_extract_proj.weight)


# ------------------------------------------------------------------ Auto-AVSR


@pytest.mark.parametrize("name", ["autoavsr-vsr", "autoavsr-asr", "autoavsr-avsr"])
def test_autoavsr_own_init(tmp_path, name):
    """Auto-AVSR's E2E applies no init of its own: PyTorch defaults everywhere, and
    espnet's RelPositionMultiHeadedAttention draws pos_bias_u/v with xavier_uniform."""
    from featstore.encoders.autoavsr.conformer import RelPositionMultiHeadedAttention
    from featstore.encoders.autoavsr.tiny import save_tiny_checkpoint

    layout = "legacy" if name == "autoavsr-avsr" else "current"
    path = save_tiny_checkpoint(name, tmp_path / "m.pth", layout=layout)
    enc = load_encoder(name, str(path), random_init=True)
    check_recorded(enc, "autoavsr-pytorch")
    model = enc.model
    weighted = [
        m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d)
    ]
    assert_pytorch_default(weighted, what="Conv/Linear")
    attention = [m for m in model.modules() if isinstance(m, RelPositionMultiHeadedAttention)]
    biases = [p for m in attention for p in (m.pos_bias_u, m.pos_bias_v)]
    bounds = [math.sqrt(6 / (p.shape[0] + p.shape[1])) for p in biases]  # [heads, d_k]
    assert_uniform(biases, bounds, what="pos_bias_u/v (xavier)")
    assert_norms_one_zero(model)


# ------------------------------------------------------------------ FSFM


def mae_sincos(dim: int, grid: int) -> np.ndarray:
    """MAE's get_2d_sincos_pos_embed(dim, grid, cls_token=True), step by step as written there."""
    grid_h = np.arange(grid, dtype=np.float32)
    grid_w = np.arange(grid, dtype=np.float32)
    mesh = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape([2, 1, grid, grid])

    def one_d(embed_dim: int, pos: np.ndarray) -> np.ndarray:
        omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
        omega = 1.0 / 10000**omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([one_d(dim // 2, mesh[0]), one_d(dim // 2, mesh[1])], axis=1)
    return np.concatenate([np.zeros([1, dim]), emb], axis=0)


@pytest.mark.parametrize("layout", ["fine-tuned", "pre-trained"])
def test_fsfm_own_init(tmp_path, layout):
    """FSFM's (MAE's) initialize_weights: sin-cos pos_embed, patch projection xavier as a
    Linear, CLS N(0, 0.02), Linear xavier with zero bias, LayerNorm 1/0."""
    from featstore.encoders.fsfm import ViTConfig
    from featstore.encoders.fsfm_tiny import save_tiny_checkpoint

    wide = ViTConfig(img_size=224, patch_size=32, embed_dim=64, depth=2, num_heads=1, mlp_dim=128)
    path = save_tiny_checkpoint(tmp_path / "f.pth", config=wide, layout=layout)
    enc = load_encoder("fsfm", str(path), random_init=True)
    check_recorded(enc, "fsfm-mae")
    vit, cfg = enc.model, enc.config
    assert enc.info().extra["fsfm_layout"] == layout
    grid = cfg.img_size // cfg.patch_size
    np.testing.assert_allclose(
        vit.pos_embed.detach()[0].numpy(), mae_sincos(cfg.embed_dim, grid), atol=1e-6
    )
    patch = vit.patch_embed.proj
    fan_in = patch.weight[0].numel()  # 3 * p * p
    assert_uniform(
        [patch.weight], [math.sqrt(6 / (cfg.embed_dim + fan_in))], what="patch projection"
    )
    assert_uniform([patch.bias], [1 / math.sqrt(fan_in)], what="patch bias (Conv2d default)")
    assert abs(vit.cls_token.std().item() / 0.02 - 1) < 0.4  # 64 values
    linears = [m for m in vit.modules() if isinstance(m, nn.Linear)]
    assert_uniform(
        [m.weight for m in linears],
        [math.sqrt(6 / (m.in_features + m.out_features)) for m in linears],
        what="Linear (xavier)",
    )
    assert all(torch.all(m.bias == 0) for m in linears)
    assert_norms_one_zero(vit)


def test_sincos_table_matches_mae():
    from featstore.encoders.fsfm_init import sincos_pos_embed

    for dim, grid in ((16, 7), (768, 14)):
        np.testing.assert_allclose(sincos_pos_embed(dim, grid), mae_sincos(dim, grid), atol=1e-6)


# ------------------------------------------------------------------ every family


@pytest.mark.parametrize(
    "name", ["wav2vec2", "clip", "videomae", "avhubert-v", "autoavsr-vsr", "fsfm"]
)
def test_seeded_same_weights_every_load(tmp_path, hf_dirs, avhubert_ckpt, name):
    """Workers of a distributed extraction each build the same random model; the caller's
    random state is left as it was."""
    from featstore.encoders.autoavsr.tiny import save_tiny_checkpoint as save_autoavsr
    from featstore.encoders.fsfm_tiny import save_tiny_checkpoint as save_fsfm

    factories = {
        "avhubert-v": lambda: avhubert_ckpt,
        "autoavsr-vsr": lambda: str(save_autoavsr(name, tmp_path / "a.pth")),
        "fsfm": lambda: str(save_fsfm(tmp_path / "f.pth")),
    }
    checkpoint = factories[name]() if name in factories else hf_dirs[name]
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = load_encoder(name, checkpoint, random_init=True)
    assert torch.equal(torch.rand(1), before)  # global RNG untouched
    b = load_encoder(name, checkpoint, random_init=True)
    assert_same_weights(a.model, b.model)


def test_scheme_option_errors(avhubert_ckpt):
    with pytest.raises(EncoderError, match="must be one of native, bert"):
        load_encoder("avhubert-a", avhubert_ckpt, random_init=True, random_init_scheme="xavier")
    with pytest.raises(EncoderError, match="only with random_init"):
        load_encoder("avhubert-a", avhubert_ckpt, random_init_scheme="bert")
    trained = load_encoder("avhubert-a", avhubert_ckpt)
    assert trained.random_init_scheme is None
    assert "random_init_scheme" not in trained.info().extra
    native = load_encoder(
        "avhubert-a", avhubert_ckpt, random_init=True, random_init_scheme="native"
    )
    assert native.random_init_scheme is get_spec("avhubert-a").init_scheme


def test_store_records_the_scheme(store, avhubert_ckpt):
    """The encoder group's attrs (what `featstore store info` and readers see)."""
    enc = load_encoder("avhubert-a", avhubert_ckpt, random_init=True, random_init_scheme="bert")
    store.writer("d", enc.info(layers=["last"]))
    stored = store.encoder_info("d", "avhubert-a")
    assert stored.random_init and stored.extra["random_init_scheme"] == "bert"
    assert stored.extra["random_init_seed"] == SEED


def test_rebuild_options_from_stored_info(avhubert_ckpt):
    """Stored features name their scheme; old random features (no name) were BERT-style."""
    from featstore.encoders.random_init import rebuild_options

    spec = get_spec("avhubert-a")
    for scheme in ("native", "bert"):
        enc = load_encoder("avhubert-a", avhubert_ckpt, random_init=True, random_init_scheme=scheme)
        options = rebuild_options(spec, random_init=True, extra=enc.info().extra)
        again = load_encoder("avhubert-a", avhubert_ckpt, random_init=True, **options)
        assert_same_weights(enc.model, again.model)
    assert rebuild_options(spec, random_init=True, extra={"family": "avhubert"}) == {
        "random_init_scheme": "bert"
    }
    assert rebuild_options(spec, random_init=False, extra={}) == {}
    with pytest.raises(EncoderError, match="cannot rebuild"):
        rebuild_options(spec, random_init=True, extra={"random_init_scheme": "fsfm-mae"})
