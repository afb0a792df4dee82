"""The shared epoch loop: checkpoints, resume equality, interrupts (SIGINT/SIGTERM).

Resume equality is checked against an uninterrupted fit of the same data and
config: a fit interrupted after k epochs and resumed from its checkpoint must
end with the very same weights, history and early-stopping outcome.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

from featstore.trainers.checkpoints import (
    CheckpointError,
    checkpoint_epoch,
    load_checkpoint,
    save_checkpoint,
)
from featstore.trainers.ntp import NTPConfig, fit_ntp
from featstore.trainers.probe import ProbeConfig, fit_probe
from featstore.trainers.sources import ArraySource
from featstore.trainers.sync import SyncConfig, fit_sync
from featstore.trainers.training import (
    EarlyStopping,
    StateFunctions,
    TrainingControl,
    TrainingError,
    train_epochs,
)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- the codec


def test_checkpoint_round_trip_keeps_types_and_bits(tmp_path):
    state = {
        "optimizer": {
            "state": {0: {"step": torch.tensor(7.0), "exp_avg": torch.randn(3, 2)}},
            "param_groups": [{"lr": 1e-3 / 3, "betas": (0.9, 0.999), "params": [0, 1]}],
        },
        "rng": np.random.default_rng(5).bit_generator.state,  # 128-bit integers
        "best_loss": math.inf,
        "nan": math.nan,
        "ids": torch.arange(4, dtype=torch.int64),
        "mask": np.array([True, False]),
        "half": torch.ones(2, dtype=torch.float16),
        "none": None,
        "flag": True,
        "scalar": np.float32(0.1),
    }
    save_checkpoint(tmp_path, state, epoch=3)
    back = load_checkpoint(tmp_path)
    assert checkpoint_epoch(tmp_path) == 3
    opt = back["optimizer"]
    assert list(opt["state"]) == [0] and opt["param_groups"][0]["betas"] == (0.9, 0.999)
    assert opt["param_groups"][0]["lr"] == 1e-3 / 3  # bit for bit
    assert torch.equal(opt["state"][0]["exp_avg"], state["optimizer"]["state"][0]["exp_avg"])
    assert back["rng"] == state["rng"] and back["best_loss"] == math.inf
    assert math.isnan(back["nan"]) and back["none"] is None and back["flag"] is True
    assert back["ids"].dtype == torch.int64 and back["half"].dtype == torch.float16
    assert back["mask"].dtype == np.bool_ and back["mask"].tolist() == [True, False]
    assert back["scalar"] == float(np.float32(0.1))


def test_a_new_checkpoint_replaces_the_old_and_damage_is_detected(tmp_path):
    save_checkpoint(tmp_path, {"w": torch.zeros(4)}, epoch=2)
    save_checkpoint(tmp_path, {"w": torch.ones(4)}, epoch=4)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["checkpoint.json", "state-000004.safetensors"]  # no temporaries left
    assert torch.equal(load_checkpoint(tmp_path)["w"], torch.ones(4))
    tensors = tmp_path / "state-000004.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-1] ^= 0xFF
    tensors.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="cannot store"):
        save_checkpoint(tmp_path, {"x": object()}, epoch=5)


def test_early_stopping_state_round_trip():
    stop = EarlyStopping(3, snapshot=lambda: 0)
    for epoch, loss in enumerate([1.0, 0.5, 0.7, 0.8], start=1):
        stop.update(epoch, loss)
    again = EarlyStopping(3, snapshot=lambda: 0)
    again.load_state_dict(stop.state_dict())
    assert again.update(5, 0.9)  # the 2 bad epochs carried over: a 3rd stops
    assert again.best_epoch == 2 and again.best_loss == 0.5
    assert not EarlyStopping(3, snapshot=lambda: 0).update(5, 0.9)


# ----------------------------------------------------------------------------- the loop


@dataclass(frozen=True)
class ToyStats:
    epoch: int
    train_loss: float
    val_loss: float | None
    seconds: float = 0.0


class Toy:
    """Noisy gradient steps on ``|w - target|^2``: weights, momentum and a generator evolve."""

    def __init__(self, *, steps: int = 6, fail: tuple[int, int] | None = None, kill=None) -> None:
        self.w = torch.zeros(5, dtype=torch.float64)
        self.m = torch.zeros(5, dtype=torch.float64)
        self.rng = np.random.default_rng(0)
        self.target = torch.linspace(-1, 1, 5, dtype=torch.float64)
        self.steps, self.fail, self.kill = steps, fail, kill

    def epoch(self, n: int) -> tuple[ToyStats, float | None]:
        for step in range(self.steps):
            if self.fail == (n, step):  # an interrupt in the middle of an epoch
                raise KeyboardInterrupt
            if self.kill == (n, step):
                os.kill(os.getpid(), signal.SIGTERM)
            noise = torch.from_numpy(self.rng.standard_normal(5))
            self.m = 0.9 * self.m + (self.w - self.target) + 0.5 * noise
            self.w = self.w - 0.05 * self.m
        loss = float(((self.w - self.target) ** 2).sum())
        val = loss + 0.3 * math.sin(n)  # wiggles: early stopping has counters to keep
        return ToyStats(n, loss, val), val

    def state(self) -> StateFunctions:
        def load(state: Mapping[str, Any]) -> None:
            self.w, self.m = state["w"].clone(), state["m"].clone()
            self.rng.bit_generator.state = state["rng"]

        return StateFunctions(
            lambda: {"w": self.w, "m": self.m, "rng": self.rng.bit_generator.state}, load
        )


def run_toy(toy: Toy, control: TrainingControl | None = None, *, max_epochs: int = 40, **kw):
    return train_epochs(
        toy.epoch,
        max_epochs=max_epochs,
        patience=4,
        snapshot=lambda: toy.w.clone(),
        state=toy.state(),
        stats_type=ToyStats,
        control=control,
        **kw,
    )


def test_resume_after_a_mid_epoch_interrupt_equals_an_uninterrupted_fit(tmp_path):
    whole = run_toy(Toy())
    assert whole.stopped_early and whole.best_epoch >= 5  # the counters matter below
    interrupt_at = whole.best_epoch + 2
    assert interrupt_at < len(whole.history)
    ck = tmp_path / "ck"
    cut = run_toy(Toy(fail=(interrupt_at, 3)), TrainingControl(ck, checkpoint_every=2))
    assert cut.interruption is not None and cut.interruption.signal == "SIGINT"
    assert cut.interruption.epochs_completed == interrupt_at - 1
    # mid-epoch: the last periodic checkpoint is the one to resume from
    assert cut.interruption.checkpoint_epoch == 2 * ((interrupt_at - 1) // 2)
    assert len(cut.history) == interrupt_at - 1
    resumed = run_toy(Toy(), TrainingControl(ck, checkpoint_every=2, resume=True))
    assert resumed.resumed_from == cut.interruption.checkpoint_epoch
    assert torch.equal(resumed.best, whole.best)
    assert (resumed.best_epoch, resumed.stopped_early) == (whole.best_epoch, whole.stopped_early)
    assert resumed.history == whole.history


def test_interrupt_between_epochs_checkpoints_that_epoch(tmp_path):
    ck = tmp_path / "ck"

    def stop_after_3(stats: ToyStats) -> None:
        if stats.epoch == 3:
            raise KeyboardInterrupt

    cut = run_toy(Toy(), TrainingControl(ck, checkpoint_every=5), on_epoch=stop_after_3)
    assert cut.interruption.epochs_completed == 3 and cut.interruption.checkpoint_epoch == 3
    assert checkpoint_epoch(ck) == 3
    whole = run_toy(Toy())
    resumed = run_toy(Toy(), TrainingControl(ck, checkpoint_every=5, resume=True))
    assert torch.equal(resumed.best, whole.best) and resumed.history == whole.history


def test_sigterm_ends_the_loop_with_the_best_so_far_and_restores_the_handler(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    cut = run_toy(Toy(kill=(4, 2)), TrainingControl(tmp_path / "ck", checkpoint_every=1))
    assert signal.getsignal(signal.SIGTERM) is before
    assert cut.interruption.signal == "SIGTERM" and cut.interruption.exit_code == 143
    assert cut.interruption.epochs_completed == 3 and cut.interruption.checkpoint_epoch == 3
    losses = [h.val_loss for h in cut.history]
    assert cut.best_epoch == 1 + int(np.argmin(losses))


def test_a_signal_during_bookkeeping_waits_until_it_is_consistent(tmp_path):
    toy = Toy()
    snapshots = []

    def snapshot() -> torch.Tensor:
        snapshots.append(len(snapshots))
        if len(snapshots) == 3:  # inside the 2nd epoch's best-weights copy
            os.kill(os.getpid(), signal.SIGINT)
        return toy.w.clone()

    cut = train_epochs(
        toy.epoch,
        max_epochs=40,
        patience=4,
        snapshot=snapshot,
        state=toy.state(),
        stats_type=ToyStats,
        control=TrainingControl(tmp_path / "ck", checkpoint_every=10),
    )
    done = cut.interruption.epochs_completed
    assert len(snapshots) == 3 and cut.best_epoch == done  # the epoch was recorded whole
    assert torch.equal(cut.best, toy.w)  # the copy finished: best holds that epoch's weights
    assert cut.interruption.checkpoint_epoch == done  # and that boundary was checkpointed


def test_without_a_control_interrupts_propagate():
    with pytest.raises(KeyboardInterrupt):
        run_toy(Toy(fail=(2, 0)))


def test_resume_refuses_another_training(tmp_path):
    ck = tmp_path / "ck"
    run_toy(Toy(), TrainingControl(ck, checkpoint_every=1, fingerprint={"lr": 0.1}), max_epochs=3)
    assert checkpoint_epoch(ck) == 2  # none after the last epoch: the run is finished then
    with pytest.raises(TrainingError, match=r"lr: checkpoint 0.1, now 0.2"):
        run_toy(Toy(), TrainingControl(ck, resume=True, fingerprint={"lr": 0.2}))
    neutral = {"lr": 0.1, "device": "cuda"}  # a device is not another training
    run_toy(Toy(), TrainingControl(ck, resume=True, fingerprint=neutral), max_epochs=3)
    with pytest.raises(TrainingError, match="no checkpoint"):
        run_toy(Toy(), TrainingControl(tmp_path / "none", resume=True))
    with pytest.raises(TrainingError, match="checkpoint_every"):
        TrainingControl(ck, checkpoint_every=0)


# ----------------------------------------------------------------------------- the three cores


def stop_after(k: int):
    def hook(stats: Any) -> None:
        if stats.epoch == k:
            raise KeyboardInterrupt

    return hook


def without_seconds(history: list[Any]) -> list[dict[str, Any]]:
    return [{**dataclasses.asdict(h), "seconds": 0.0} for h in history]


def probe_sources(seed: int, n: int) -> ArraySource:
    return ArraySource(*probe_arrays(seed, n))


def probe_arrays(seed: int, n: int) -> tuple[list[np.ndarray], list[int]]:
    rng = np.random.default_rng(seed)
    u = np.random.default_rng(99).standard_normal(12)
    arrays = []
    for i in range(n):
        x = rng.standard_normal((int(rng.integers(10, 30)), 12))
        if i % 2:
            x[2:6] += 1.5 * u
        arrays.append(x.astype(np.float32))
    return arrays, [i % 2 for i in range(n)]


@pytest.mark.parametrize(
    "options",
    [
        {},  # the default: the authors' loop, one video per step, their draws
        {"batch_videos": 4},
        {"batch_videos": None, "center_bias": True, "scale_lr": False},
        {"rng": "numpy"},  # runs trained before the authors' draws
    ],
    ids=["authors-loop", "batch-videos-4", "auto-centred", "numpy-draws"],
)
def test_probe_resume_equals_an_uninterrupted_fit(tmp_path, options):
    train, val = probe_sources(0, 40), probe_sources(1, 16)
    cfg = ProbeConfig(lr=0.05, max_epochs=25, patience=3, **options)
    whole = fit_probe(train, val, cfg)
    k = min(whole.best_epoch + 1, len(whole.history) - 1)
    ck = TrainingControl(tmp_path / "ck", checkpoint_every=1)
    cut = fit_probe(train, val, cfg, control=ck, on_epoch=stop_after(k))
    assert cut.interruption.epochs_completed == k and len(cut.history) == k
    resumed = fit_probe(train, val, cfg, control=dataclasses.replace(ck, resume=True))
    assert resumed.resumed_from == k
    np.testing.assert_array_equal(resumed.params.w, whole.params.w)
    assert resumed.params.b == whole.params.b
    assert (resumed.best_epoch, resumed.stopped_early) == (whole.best_epoch, whole.stopped_early)
    assert without_seconds(resumed.history) == without_seconds(whole.history)


@pytest.mark.parametrize("steps_type", ["CpuSteps", "TorchSteps"])
def test_probe_steps_state_round_trips_through_a_checkpoint(tmp_path, steps_type):
    """Both step engines (compiled CPU loop, torch ops for other devices): a state saved,
    written, read and loaded into fresh steps goes on exactly as the original does."""
    from featstore.trainers import probe_step
    from featstore.trainers.probe import _pack

    arrays, labels = probe_arrays(2, 12)
    packed = _pack(arrays, np.asarray(labels), half=False, l2_normalize=True)
    make = getattr(probe_step, steps_type)
    args = () if steps_type == "CpuSteps" else (torch.device("cpu"),)
    rng = np.random.default_rng(5)
    init = rng.standard_normal(13).astype(np.float32) * 0.1
    orders = [rng.permutation(12) for _ in range(3)]
    a = make(init, *args)
    a.train(packed, orders[0], 1, 0.05)
    save_checkpoint(tmp_path, {"trainer": a.state_dict()}, epoch=1)
    b = make(np.zeros(13, np.float32), *args)
    b.load_state_dict(load_checkpoint(tmp_path)["trainer"])
    for order in orders[1:]:
        assert a.train(packed, order, 3, 0.05) == b.train(packed, order, 3, 0.05)
    np.testing.assert_array_equal(a.weights(), b.weights())
    with pytest.raises(CheckpointError, match="params"):
        make(np.zeros(7, np.float32), *args).load_state_dict(a.state_dict())


def smooth(seed: int, n: int) -> ArraySource:
    rng = np.random.default_rng(seed)
    arrays = []
    for _ in range(n):
        t = np.arange(int(rng.integers(20, 40)))[:, None]
        x = np.sin(rng.uniform(0.05, 0.3, (1, 8)) * t) + 0.05 * rng.standard_normal((len(t), 8))
        arrays.append(x.astype(np.float32))
    return ArraySource(arrays, [0] * n)


def test_ntp_resume_equals_an_uninterrupted_fit_with_dropout_and_cosine(tmp_path):
    train, val = smooth(0, 12), smooth(1, 4)
    cfg = NTPConfig(
        d_model=16, n_layers=1, n_heads=2, d_ff=32, dropout=0.1, max_context=16, lr=3e-3,
        max_epochs=6, patience=10, batch_videos=4,
    )  # fmt: skip
    whole = fit_ntp(train, val, cfg)
    ck = TrainingControl(tmp_path / "ck", checkpoint_every=2)
    cut = fit_ntp(train, val, cfg, control=ck, on_epoch=stop_after(3))
    assert cut.interruption.checkpoint_epoch == 3
    resumed = fit_ntp(train, val, cfg, control=dataclasses.replace(ck, resume=True))
    for key, value in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
    assert without_seconds(resumed.history) == without_seconds(whole.history)


def pairs(seed: int, n: int) -> list[Any]:
    @dataclass(frozen=True)
    class Pair:
        audio: np.ndarray
        visual: np.ndarray

    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(7).standard_normal((6, 8))
    out = []
    for _ in range(n):
        a = rng.standard_normal((int(rng.integers(30, 50)), 8)).astype(np.float32)
        out.append(Pair(a, (a @ mix.T + 0.5 * rng.standard_normal((len(a), 6))).astype(np.float32)))
    return out


def test_sync_resume_equals_an_uninterrupted_fit_with_its_plateau_schedule(tmp_path):
    train, val = pairs(0, 6), pairs(1, 3)
    cfg = SyncConfig(
        lr=3e-3, max_epochs=10, patience=3, lr_patience=1, batch_frames=64, proj_dim=16,
        hidden=(16, 8),
    )  # fmt: skip
    whole = fit_sync(train, val, cfg)
    ck = TrainingControl(tmp_path / "ck", checkpoint_every=1)
    cut = fit_sync(train, val, cfg, control=ck, on_epoch=stop_after(4))
    assert cut.interruption.epochs_completed == 4
    resumed = fit_sync(train, val, cfg, control=dataclasses.replace(ck, resume=True))
    for key, value in whole.net.state_dict().items():
        assert torch.equal(resumed.net.state_dict()[key], value), key
    assert without_seconds(resumed.history) == without_seconds(whole.history)


# ----------------------------------------------------------------------------- streamed reads
# cache_bytes=0 streams every batch from the source (featstore.trainers.memory): a streamed fit,
# interrupted and resumed (streamed, or cached: the budget is no part of the training),
# ends with the weights and history of an uninterrupted fit held in memory.

STREAMED_THEN = pytest.mark.parametrize("resume_cache", [0, None], ids=["streamed", "cached"])


@STREAMED_THEN
def test_a_streamed_probe_resumed_equals_an_uninterrupted_fit(tmp_path, resume_cache):
    train, val = probe_sources(0, 40), probe_sources(1, 16)
    cfg = ProbeConfig(lr=0.05, max_epochs=25, patience=3, batch_videos=4)
    whole = fit_probe(train, val, cfg)
    k = min(whole.best_epoch + 1, len(whole.history) - 1)
    ck = TrainingControl(tmp_path / "ck", checkpoint_every=2)
    streamed = dataclasses.replace(cfg, cache_bytes=0)
    cut = fit_probe(train, val, streamed, control=ck, on_epoch=stop_after(k))
    assert cut.interruption.epochs_completed == k
    again = dataclasses.replace(cfg, cache_bytes=resume_cache)
    resumed = fit_probe(train, val, again, control=dataclasses.replace(ck, resume=True))
    assert resumed.resumed_from == k
    np.testing.assert_array_equal(resumed.params.w, whole.params.w)
    assert resumed.params.b == whole.params.b
    assert (resumed.best_epoch, resumed.stopped_early) == (whole.best_epoch, whole.stopped_early)
    assert without_seconds(resumed.history) == without_seconds(whole.history)


@STREAMED_THEN
def test_a_streamed_ntp_resumed_equals_an_uninterrupted_fit(tmp_path, resume_cache):
    train, val = smooth(0, 12), smooth(1, 4)
    cfg = NTPConfig(
        d_model=16, n_layers=1, n_heads=2, d_ff=32, dropout=0.1, max_context=16, lr=3e-3,
        max_epochs=5, patience=10, batch_videos=4,
    )  # fmt: skip
    whole = fit_ntp(train, val, cfg)
    ck = TrainingControl(tmp_path / "ck", checkpoint_every=2)
    streamed = dataclasses.replace(cfg, cache_bytes=0)
    cut = fit_ntp(train, val, streamed, control=ck, on_epoch=stop_after(3))
    assert cut.interruption.checkpoint_epoch == 3
    again = dataclasses.replace(cfg, cache_bytes=resume_cache)
    resumed = fit_ntp(train, val, again, control=dataclasses.replace(ck, resume=True))
    for key, value in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
    assert without_seconds(resumed.history) == without_seconds(whole.history)


@STREAMED_THEN
def test_a_streamed_sync_resumed_equals_an_uninterrupted_fit(tmp_path, resume_cache):
    train, val = pairs(0, 6), pairs(1, 3)
    cfg = SyncConfig(
        lr=3e-3, max_epochs=8, patience=3, lr_patience=1, batch_frames=64, proj_dim=16,
        hidden=(16, 8),
    )  # fmt: skip
    whole = fit_sync(train, val, cfg)
    ck = TrainingControl(tmp_path / "ck", checkpoint_every=2)
    streamed = dataclasses.replace(cfg, cache_bytes=0)
    cut = fit_sync(train, val, streamed, control=ck, on_epoch=stop_after(3))
    assert cut.interruption.epochs_completed == 3
    again = dataclasses.replace(cfg, cache_bytes=resume_cache)
    resumed = fit_sync(train, val, again, control=dataclasses.replace(ck, resume=True))
    assert resumed.resumed_from == 3
    for key, value in whole.net.state_dict().items():
        assert torch.equal(resumed.net.state_dict()[key], value), key
    assert without_seconds(resumed.history) == without_seconds(whole.history)
