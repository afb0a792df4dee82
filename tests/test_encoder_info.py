"""EncoderInfo.conflicts: what makes two writers' features incomparable."""

from __future__ import annotations

import numpy as np
import pytest

from featstore import EncoderInfo, open_store
from featstore.errors import FeatstoreError


def _info(**kw) -> EncoderInfo:
    base = dict(name="clip", frame_hz=25.0, layer_dims={"last": 8}, random_init=True)
    base.update(kw)
    return EncoderInfo(**base)


def test_random_init_schemes_conflict_and_missing_scheme_means_bert() -> None:
    native = _info(extra={"random_init_scheme": "clip-hf", "random_init_seed": 0})
    old = _info()  # written before schemes were recorded: the BERT-style scheme
    assert any("random_init_scheme" in c for c in native.conflicts(old))
    assert native.conflicts(native) == []
    bert = _info(extra={"random_init_scheme": "bert", "random_init_seed": 0})
    assert bert.conflicts(old) == []
    other_seed = _info(extra={"random_init_scheme": "clip-hf", "random_init_seed": 1})
    assert any("random_init_seed" in c for c in other_seed.conflicts(native))


def test_trained_features_ignore_scheme_and_pooling_compared_when_recorded() -> None:
    a = _info(random_init=False, extra={"pooling": "mean"})
    assert a.conflicts(_info(random_init=False)) == []
    assert any(
        "pooling" in c for c in a.conflicts(_info(random_init=False, extra={"pooling": "cls"}))
    )


def test_writer_refuses_to_mix_schemes_under_one_encoder(tmp_path) -> None:
    store = open_store(str(tmp_path / "s.zarr"), mode="a", durable=False)
    rows = np.zeros((3, 8), np.float16)
    with store.writer("d", _info()) as w:
        w.add("v1", {"last": rows})
    native = _info(extra={"random_init_scheme": "clip-hf", "random_init_seed": 0})
    with pytest.raises(FeatstoreError, match="random_init_scheme"), store.writer("d", native) as w:
        w.add("v2", {"last": rows})
