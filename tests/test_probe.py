"""The linear probe (paper Eq. 1) and its video sources."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save
from sklearn.metrics import roc_auc_score

from trainers.probe import (
    ProbeConfig,
    ProbeError,
    ProbeParams,
    auto_batch_videos,
    batch_loss,
    fit_probe,
    frame_logits,
    masked_logsumexp,
    probability,
    score_source,
    video_logit,
    video_losses,
)
from trainers.sources import (
    ArraySource,
    FeatureCache,
    SourceError,
    VideoSource,
    batch_order,
    pad_batch,
    prefetch_batches,
)

torch.set_num_threads(1)

DIM = 32


@dataclass(frozen=True)
class Planted:
    source: ArraySource
    segments: list[tuple[int, int] | None]  # fake rows [start, stop) per video


def make_planted(
    n: int, *, seed: int, dim: int = DIM, amplitude: float = 3.0, dtype=np.float16
) -> Planted:
    """Noise videos; fakes carry ``amplitude * u`` on one segment (u fixed across seeds)."""
    u = np.random.default_rng(1234).standard_normal(dim)
    u /= np.linalg.norm(u)
    rng = np.random.default_rng(seed)
    arrays, labels, segments = [], [], []
    for i in range(n):
        t = int(rng.integers(12, 40))
        x = rng.standard_normal((t, dim)).astype(np.float32)
        fake = i % 2
        seg = None
        if fake:
            a = int(rng.integers(0, t - 4))
            seg = (a, a + int(rng.integers(3, min(10, t - a) + 1)))
            x[seg[0] : seg[1]] += amplitude * u
        arrays.append(x.astype(dtype))
        labels.append(fake)
        segments.append(seg)
    return Planted(ArraySource(arrays, labels), segments)


@pytest.fixture(scope="module")
def planted_fit():
    train, val, test = make_planted(120, seed=1), make_planted(40, seed=2), make_planted(80, seed=3)
    # lr 0.03: 120 videos give too few Adam steps for 1e-3 (b alone must reach about -log T)
    result = fit_probe(train.source, val.source, ProbeConfig(lr=0.03, max_epochs=10, patience=3))
    return result, test


def test_recovers_planted_direction(planted_fit):
    result, test = planted_fit
    scores, _ = score_source(result.params, test.source)
    assert roc_auc_score(test.source.labels, scores) > 0.95
    assert result.history[-1].val_auc is not None and result.history[-1].val_auc > 0.95


def test_localizes_planted_segments(planted_fit):
    result, test = planted_fit
    _, frames = score_source(result.params, test.source)
    aucs = []
    for z, seg, t in zip(frames, test.segments, test.source.lengths, strict=True):
        if seg is not None:
            truth = np.zeros(t, dtype=int)
            truth[seg[0] : seg[1]] = 1
            aucs.append(roc_auc_score(truth, z))
    assert np.mean(aucs) > 0.9


def test_score_source_matches_single_video_functions(planted_fit):
    result, test = planted_fit
    scores, frames = score_source(result.params, test.source, batch_videos=7)
    for i, x in enumerate(test.source.read(range(len(test.source)))):
        np.testing.assert_allclose(frames[i], frame_logits(result.params, x), rtol=1e-5, atol=1e-6)
        assert scores[i] == pytest.approx(video_logit(result.params, x), rel=1e-5, abs=1e-6)


def _ragged(arrays, labels):
    x = torch.from_numpy(np.concatenate(arrays).astype(np.float32))
    norms = torch.linalg.vector_norm(x, dim=1)
    lengths = torch.tensor([a.shape[0] for a in arrays])
    return x, norms, lengths, torch.tensor(labels, dtype=torch.float32)


def _grads(w0, b0, *args):
    w, b = w0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
    batch_loss(w, b, *args).backward()
    return w.grad, b.grad


def test_batch_gradient_is_mean_of_per_video_gradients():
    src = make_planted(6, seed=5, dtype=np.float32).source
    arrays, labels = src.read(range(6)), src.labels.tolist()
    w0, b0 = torch.randn(DIM, generator=torch.Generator().manual_seed(0)), torch.tensor([0.1])
    gw, gb = _grads(w0, b0, *_ragged(arrays, labels))
    singles = [_grads(w0, b0, *_ragged([a], [y])) for a, y in zip(arrays, labels, strict=True)]
    torch.testing.assert_close(
        gw, torch.stack([g[0] for g in singles]).mean(0), rtol=1e-5, atol=1e-7
    )
    torch.testing.assert_close(
        gb, torch.stack([g[1] for g in singles]).mean(0), rtol=1e-5, atol=1e-7
    )


def test_padding_is_irrelevant():
    src = make_planted(5, seed=6, dtype=np.float32).source
    arrays = src.read(range(5))
    x, mask = pad_batch(arrays)  # [B, T, D], [B, T]
    xg = x.copy()
    xg[~mask] = 1e4  # garbage in the padded frames
    w = torch.randn(DIM, generator=torch.Generator().manual_seed(1))
    ref = _ragged(arrays, src.labels.tolist())
    ragged = batch_loss(w, torch.zeros(1), *ref)
    for padded in (x, xg):
        xt, m = torch.from_numpy(padded), torch.from_numpy(mask)
        z = (xt @ w) / torch.linalg.vector_norm(xt, dim=2).clamp_min(1e-12)  # [B, T]
        s = masked_logsumexp(z, m)
        loss = video_losses(s, torch.from_numpy(src.labels.astype(np.float32))).mean()
        torch.testing.assert_close(loss, ragged, rtol=1e-5, atol=1e-6)
    z = torch.randn(3, 6, requires_grad=True)
    m = torch.tensor([[1, 1, 0, 0, 0, 0], [1] * 6, [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    masked_logsumexp(z, m).sum().backward()
    assert (z.grad[~m] == 0).all()
    torch.testing.assert_close(masked_logsumexp(z.detach(), m)[2], z.detach()[2, 0])


def _reference_loop(src: ArraySource, val: ArraySource, epochs: int, seed: int = 43):
    """The authors' loop: one video per step, Linear + logsumexp + CE over [-s, s], Adam."""
    model = torch.nn.Linear(src.dim, 1)
    gen = torch.Generator().manual_seed(seed)  # fit_probe's documented init
    bound = 1 / math.sqrt(src.dim)
    with torch.no_grad():
        model.weight.copy_(((torch.rand(src.dim, generator=gen) * 2 - 1) * bound)[None])
        model.bias.copy_((torch.rand(1, generator=gen) * 2 - 1) * bound)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(seed)

    def video_loss(x, y):
        phi = F.normalize(torch.from_numpy(x).float(), dim=-1)
        s = torch.logsumexp(model(phi)[:, 0], dim=0)
        return F.cross_entropy(torch.stack([-s, s])[None], torch.tensor([int(y)]))

    train_losses, val_losses = [], []
    for _ in range(epochs):
        total = 0.0
        for i in rng.permutation(len(src)):
            loss = video_loss(src.read([i])[0], src.labels[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        train_losses.append(total / len(src))
        with torch.no_grad():
            vl = [
                float(video_loss(x, y))
                for x, y in zip(val.read(range(len(val))), val.labels, strict=True)
            ]
        val_losses.append(float(np.mean(vl)))
    return model.weight.detach()[0].numpy(), float(model.bias.detach()[0]), train_losses, val_losses


def test_one_video_per_step_reproduces_reference_loop():
    train, val = make_planted(30, seed=7).source, make_planted(10, seed=8).source
    epochs = 4
    w_ref, b_ref, tl_ref, vl_ref = _reference_loop(train, val, epochs)
    authors = ProbeConfig(max_epochs=epochs, batch_videos=1, patience=epochs, center_bias=False)
    result = fit_probe(train, val, authors)
    assert len(result.history) == epochs
    np.testing.assert_allclose([h.train_loss for h in result.history], tl_ref, rtol=1e-4)
    np.testing.assert_allclose([h.val_loss for h in result.history], vl_ref, rtol=1e-4)
    assert result.best_epoch == epochs  # val loss fell every epoch: the last weights are the best
    np.testing.assert_allclose(result.params.w, w_ref, rtol=1e-4, atol=1e-6)
    assert result.params.b == pytest.approx(b_ref, rel=1e-5)


def test_auto_batch_keeps_small_sets_one_video_per_step():
    assert auto_batch_videos(40) == 1
    assert auto_batch_videos(1023) == 1
    assert auto_batch_videos(5000) == 9
    assert auto_batch_videos(10**6) == 16
    small = make_planted(40, seed=9).source
    auto = fit_probe(small, config=ProbeConfig(max_epochs=30))
    one = fit_probe(small, config=ProbeConfig(max_epochs=30, batch_videos=1))
    assert (auto.batch_videos, auto.lr) == (1, 1e-3)
    np.testing.assert_array_equal(auto.params.w, one.params.w)


def test_scaled_lr_keeps_batched_training_on_the_one_video_curve():
    small = make_planted(40, seed=9).source
    cfg = ProbeConfig(max_epochs=30, center_bias=False)  # the authors' init: the slow case
    one = fit_probe(small, config=dataclasses.replace(cfg, batch_videos=1))
    plain = fit_probe(small, config=dataclasses.replace(cfg, batch_videos=8, scale_lr=False))
    scaled = fit_probe(small, config=dataclasses.replace(cfg, batch_videos=8))
    assert scaled.lr == pytest.approx(8e-3)
    final = [r.history[-1].train_loss for r in (one, plain, scaled)]
    # 8 videos per step at lr 1e-3 take 8x fewer Adam steps: far behind after 30 epochs
    assert final[1] > final[0] + 0.4
    assert abs(final[2] - final[0]) < 0.2 * final[0]


def test_centred_bias_starts_at_even_odds_and_trains_small_sets_faster():
    small = make_planted(40, seed=9).source
    centred = fit_probe(small, config=ProbeConfig(max_epochs=1, lr=1e-12))
    scores, _ = score_source(centred.params, small)
    # before training s = logsumexp_t(w.phi_t + b) ~ 0 (|w.phi_t| <= |w| ~ 0.6 at Linear's init)
    assert np.abs(scores).max() < 1.0
    uncentred = fit_probe(small, config=ProbeConfig(max_epochs=1, lr=1e-12, center_bias=False))
    assert score_source(uncentred.params, small)[0].min() > 2.0  # ~ log T: P(fake) ~ 1
    authors = fit_probe(small, config=ProbeConfig(max_epochs=30, center_bias=False))
    ours = fit_probe(small, config=ProbeConfig(max_epochs=30))
    # the authors' init starts every video at s ~ log T and spends the epochs moving b
    assert ours.history[-1].train_loss < 0.5 * authors.history[-1].train_loss


def test_deterministic_under_seed():
    train = make_planted(24, seed=10).source
    cfg = ProbeConfig(max_epochs=3, batch_videos=4)
    a, b = fit_probe(train, config=cfg), fit_probe(train, config=cfg)
    np.testing.assert_array_equal(a.params.w, b.params.w)
    assert [h.train_loss for h in a.history] == [h.train_loss for h in b.history]
    c = fit_probe(train, config=ProbeConfig(max_epochs=3, batch_videos=4, seed=44))
    assert not np.array_equal(a.params.w, c.params.w)


def test_early_stopping_restores_best_weights():
    train = make_planted(40, seed=11).source
    flipped = make_planted(20, seed=12).source
    val = ArraySource(flipped.read(range(20)), 1 - flipped.labels)  # learning the task hurts val
    cfg = ProbeConfig(lr=0.03, max_epochs=50, patience=3, batch_videos=2)
    result = fit_probe(train, val, cfg)
    losses = [h.val_loss for h in result.history]
    assert result.stopped_early
    assert result.best_epoch == int(np.argmin(losses)) + 1
    assert len(result.history) == result.best_epoch + cfg.patience
    rerun = fit_probe(train, None, dataclasses.replace(cfg, max_epochs=result.best_epoch))
    np.testing.assert_array_equal(result.params.w, rerun.params.w)
    assert result.params.b == rerun.params.b


def test_streamed_equals_cached():
    train, val = make_planted(30, seed=13).source, make_planted(10, seed=14).source
    cfg = ProbeConfig(max_epochs=3, batch_videos=4)
    cached = fit_probe(train, val, cfg)
    streamed = fit_probe(train, val, ProbeConfig(max_epochs=3, batch_videos=4, cache_bytes=0))
    np.testing.assert_array_equal(cached.params.w, streamed.params.w)
    assert [h.val_loss for h in cached.history] == [h.val_loss for h in streamed.history]


def test_params_round_trip_through_safetensors():
    p = ProbeParams(w=np.arange(5, dtype=np.float32), b=-0.25, l2_normalize=False)
    state = st_load(st_save(p.to_state()))
    q = ProbeParams.from_state(state)
    np.testing.assert_array_equal(q.w, p.w)
    assert (q.b, q.l2_normalize) == (p.b, p.l2_normalize)
    with pytest.raises(ProbeError, match="lacks"):
        ProbeParams.from_state({"w": p.w})


def test_probability_is_the_losses_p_fake():
    s = np.array([-3.0, -0.2, 0.0, 1.5, 40.0, -40.0])
    p_fake = torch.exp(
        -video_losses(torch.from_numpy(s), torch.ones(6, dtype=torch.float64))
    ).numpy()
    np.testing.assert_allclose(probability(s), p_fake, rtol=1e-12)
    assert probability(0.0) == 0.5


def test_clear_errors():
    good = make_planted(4, seed=15).source
    with pytest.raises(ProbeError, match="no videos"):
        fit_probe(ArraySource([], [], dim=DIM))
    with pytest.raises(ProbeError, match="16-wide"):
        fit_probe(good, make_planted(4, seed=16, dim=16).source, ProbeConfig(max_epochs=1))
    only_real = ArraySource(good.read(range(4)), [0, 0, 0, 0])
    with pytest.raises(ProbeError, match="all 4 training videos are real"):
        fit_probe(only_real)
    for bad in (
        {"lr": 0.0},
        {"max_epochs": 0},
        {"patience": -1},
        {"batch_videos": 0},
        {"device": "gpu9"},
    ):
        with pytest.raises(ProbeError):
            ProbeConfig(**bad)
    params = ProbeParams(w=np.ones(DIM, np.float32), b=0.0, l2_normalize=True)
    with pytest.raises(ProbeError, match="expected features"):
        frame_logits(params, np.ones((3, DIM + 1), np.float32))
    with pytest.raises(ProbeError, match="wide"):
        score_source(params, make_planted(2, seed=17, dim=8).source)


def test_array_source_validation():
    src = ArraySource([np.zeros((3, 4), np.float16)], [1])
    assert isinstance(src, VideoSource)
    assert (src.nbytes, src.dim, src.video_ids) == (24, 4, ["0"])
    with pytest.raises(SourceError, match="5-wide"):
        ArraySource([np.zeros((3, 4)), np.zeros((3, 5))], [0, 1])
    with pytest.raises(SourceError, match="one label per video"):
        ArraySource([np.zeros((3, 4))], [0, 1])
    with pytest.raises(SourceError, match="no frames"):
        ArraySource([np.zeros((0, 4))], [0])
    with pytest.raises(SourceError, match="0 \\(real\\) or 1"):
        ArraySource([np.zeros((2, 4))], [2])
    with pytest.raises(SourceError, match="out of range"):
        src.read([3])


def test_cache_holds_source_bytes_and_rows():
    src = make_planted(9, seed=18).source
    cache = FeatureCache(src, chunk_videos=4)
    assert cache.nbytes == src.nbytes and cache.data.dtype == torch.float16
    out = torch.empty(int(src.lengths.sum()), DIM)
    x, norms = cache.gather_into([3, 0], out)
    expect = np.concatenate(src.read([3, 0])).astype(np.float32)
    np.testing.assert_array_equal(x.numpy(), expect)
    np.testing.assert_allclose(norms.numpy(), np.linalg.norm(expect, axis=1), rtol=1e-6)


def test_prefetch_propagates_errors_and_stops_early():
    class Broken(ArraySource):
        def read(self, indices):
            if 2 in list(indices):
                raise OSError("disk gone")
            return super().read(indices)

    base = make_planted(6, seed=19).source
    src = Broken(base.read(range(6)), base.labels)
    order = batch_order(6, 1, np.random.default_rng(0))
    with pytest.raises(OSError, match="disk gone"):
        for _ in prefetch_batches(src, order):
            pass
    stream = prefetch_batches(base, order, depth=1)
    first = next(stream)
    stream.close()  # joins the reader thread without draining the rest
    assert len(first[1]) == 1
