"""The encoder interface's helpers: checkpoint digests and their cache."""

from __future__ import annotations

import hashlib
import os

import pytest

from featstore.encoders.base import CheckpointError, checkpoint_sha256


def test_checkpoint_digest_is_cached_and_follows_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATSTORE_CACHE_DIR", str(tmp_path / "cache"))
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    weights = ckpt / "model.safetensors"
    weights.write_bytes(b"weights-1")
    (ckpt / "config.json").write_text("{}")  # not a weight file: not hashed
    assert checkpoint_sha256(ckpt) == hashlib.sha256(b"weights-1").hexdigest()
    assert (tmp_path / "cache" / "checkpoint-sha256.json").is_file()

    # a cached digest is returned without reading the file again
    calls = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda *a, **k: calls.append(a) or real_open(*a, **k))
    assert checkpoint_sha256(ckpt) == hashlib.sha256(b"weights-1").hexdigest()
    assert not [c for c in calls if str(c[0]).endswith(".safetensors")]
    monkeypatch.undo()

    monkeypatch.setenv("FEATSTORE_CACHE_DIR", str(tmp_path / "cache"))
    weights.write_bytes(b"weights-22")  # new size and mtime: hashed again
    os.utime(weights, ns=(1, 1))
    assert checkpoint_sha256(ckpt) == hashlib.sha256(b"weights-22").hexdigest()


def test_a_broken_cache_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATSTORE_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "checkpoint-sha256.json").write_text("{not json")
    file = tmp_path / "model.pt"
    file.write_bytes(b"abc")
    assert checkpoint_sha256(file) == hashlib.sha256(b"abc").hexdigest()


def test_a_checkpoint_without_weights_is_an_error(tmp_path):
    with pytest.raises(CheckpointError, match="no weight files"):
        checkpoint_sha256(tmp_path)
