"""Bounded memory (``--cache-gb``): streamed training gives the model cached training gives."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from featstore.cli.main import app
from featstore.store import open_store
from featstore.trainers import memory
from featstore.trainers.sync import SyncConfig, fit_sync, net_to_state
from featstore.trainers.sync_feed import PackedPairs, PairList, StreamedPairs

from trainer_fixtures import write_planted_dataset  # isort: skip


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@dataclass(frozen=True)
class Pair:
    audio: np.ndarray
    visual: np.ndarray


def pairs(n: int, seed: int, dtype=np.float16) -> list[Pair]:
    rng = np.random.default_rng(seed)
    out = [
        Pair(rng.standard_normal((1, 6)).astype(dtype), rng.standard_normal((1, 5)).astype(dtype))
    ]
    for _ in range(n - 1):  # audio a little longer than visual, as stores often hold them
        t = int(rng.integers(2, 70))
        a = rng.standard_normal((t + int(rng.integers(0, 3)), 6)).astype(dtype)
        out.append(Pair(a, rng.standard_normal((t, 5)).astype(dtype)))
    return out


@pytest.mark.parametrize("batch_frames", [1, 7, 100, 5000])
def test_streamed_batches_hold_what_packed_batches_hold(batch_frames):
    source = PairList(pairs(25, 0), "training", error=ValueError)
    packed = PackedPairs(source, 15, torch.device("cpu"))
    streamed = StreamedPairs(source, 15, torch.device("cpu"))
    rows = np.random.default_rng(1).permutation(packed.n_frames)
    batches = [rows[i : i + batch_frames] for i in range(0, len(rows), batch_frames)]
    n = 0
    for p, s in zip(packed.batches(batches), streamed.batches(batches), strict=True):
        for name in ("audio", "inverse", "visual"):
            a, b = getattr(p, name), getattr(s, name)
            assert a.dtype == b.dtype and torch.equal(a, b), name
        n += 1
    assert n == len(batches)


def test_a_streamed_video_split_between_batches_is_read_once():
    source = PairList(pairs(12, 2), "training", error=ValueError)
    reads: list[list[int]] = []
    real_read = source.read
    source.read = lambda idx: (reads.append(list(idx)), real_read(idx))[1]  # type: ignore[method-assign]
    streamed = StreamedPairs(source, 15, torch.device("cpu"))
    rows = np.arange(streamed.n_frames)  # in order: neighbouring batches share a video
    list(streamed.batches([rows[i : i + 10] for i in range(0, len(rows), 10)]))
    flat = [v for r in reads for v in r]
    assert sorted(flat) == list(range(12))  # every video read exactly once


def test_fit_sync_streamed_is_the_cached_fit():
    config = SyncConfig(lr=1e-3, max_epochs=3, batch_frames=64, proj_dim=16, hidden=(8,))
    train, val = pairs(30, 3), pairs(8, 4)
    cached = fit_sync(train, val, config)
    budget = memory.plan_cache  # the training set alone does not fit: both are streamed
    assert budget(100, train_bytes=10**4, val_bytes=10) == (False, True)
    streamed = fit_sync(train, val, dataclasses.replace(config, cache_bytes=0))
    for key, value in net_to_state(cached.net).items():
        np.testing.assert_array_equal(value, net_to_state(streamed.net)[key])
    assert [h.train_loss for h in cached.history] == [h.train_loss for h in streamed.history]
    assert [h.val_loss for h in cached.history] == [h.val_loss for h in streamed.history]


def test_budget():
    total = memory.total_memory_bytes()
    assert 0 < memory.default_cache_bytes() <= total
    assert memory.default_cache_bytes() == int(memory.DEFAULT_FRACTION * total)
    assert memory.cache_bytes_of_gb(None) is None and memory.cache_bytes_of_gb(1.5) == 3 * 2**29
    assert memory.resolve_cache_bytes(None) == memory.default_cache_bytes()
    assert memory.plan_cache(10, train_bytes=10, val_bytes=1) == (True, False)
    assert memory.plan_cache(10, train_bytes=11, val_bytes=10) == (False, True)
    assert memory.plan_cache(10, train_bytes=5) == (True, False)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(memory.CacheBudgetError):
            memory.cache_bytes_of_gb(bad)
    with pytest.raises(memory.CacheBudgetError):
        memory.resolve_cache_bytes(-3)


# ---------------------------------------------------------------- the CLI, every trained kind


@pytest.fixture(scope="module")
def store_url(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("budget")
    url = str(root / "f.zarr")
    store = open_store(url, mode="a", durable=False)
    write_planted_dataset(store, "ds", n_videos=40, dim=16, encoder="aud", seed=1)
    write_planted_dataset(store, "ds", n_videos=40, dim=12, encoder="vis", seed=1)
    return url


COMMANDS = {
    "probe": ["probe", "--encoder", "aud+vis", "--epochs", "4", "--batch-videos", "3"],
    "ntp": ["ntp", "--encoder", "aud", "--epochs", "2", "--max-context", "16"],
    "sync": ["sync", "--audio", "aud", "--visual", "vis", "--epochs", "2", "--lr", "1e-3",
             "--batch-frames", "128"],
}  # fmt: skip


@pytest.mark.parametrize("kind", sorted(COMMANDS))
def test_cli_cache_gb_streams_to_the_same_model(kind, store_url, tmp_path, monkeypatch):
    if kind == "ntp":  # a small network: the default one takes longer than this test is worth
        from featstore.trainers.ntp import NTPConfig

        small = NTPConfig(d_model=16, n_heads=2, d_ff=16, n_layers=1)
        monkeypatch.setattr("featstore.trainers.ntp.NTPConfig", lambda: small)
    runs = {}
    for name, extra in (("cached", []), ("streamed", ["--cache-gb", "0"])):
        out = tmp_path / name
        args = ["train", *COMMANDS[kind], "--store", store_url, "--train", "ds", "--out", str(out)]
        result = CliRunner().invoke(app, [*args, *extra])
        assert result.exit_code == 0, result.output
        runs[name] = out
    config = {n: json.loads((p / "config.json").read_text()) for n, p in runs.items()}
    assert (
        config["cached"]["execution"]["train"] == config["cached"]["execution"]["val"] == "cached"
    )
    assert config["cached"]["execution"]["cache_bytes"] == memory.default_cache_bytes()
    streamed = config["streamed"]["execution"]
    assert (streamed["cache_bytes"], streamed["train"], streamed["val"]) == (
        0,
        "streamed",
        "streamed",
    )
    assert streamed["train_bytes"] > 0
    for doc in config.values():
        assert "cache_bytes" not in doc["config"]["hyperparameters"]
    same = ("config", "learnt", "fit", "train", "val")
    assert {k: config["cached"].get(k) for k in same} == {
        k: config["streamed"].get(k) for k in same
    }
    model = {n: (p / "model.safetensors").read_bytes() for n, p in runs.items()}
    assert model["cached"] == model["streamed"]


def test_cli_rejects_a_negative_budget(store_url, tmp_path: Path):
    args = ["train", *COMMANDS["probe"], "--store", store_url, "--train", "ds", "--out",
            str(tmp_path / "x"), "--cache-gb", "-1"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "--cache-gb" in result.output
