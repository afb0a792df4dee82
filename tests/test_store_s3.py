"""The store over S3 (s3fs) against a moto S3 server on 127.0.0.1."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from featstore.maintenance import compact, gc, verify
from featstore.store import EncoderInfo, open_store
from featstore.synthetic import synthetic_video, write_synthetic

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    import boto3

    boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    ).create_bucket(Bucket="features")
    yield {"endpoint_url": endpoint, "key": "test", "secret": "test"}
    server.stop()


def test_s3_store_round_trip_and_maintenance(s3):
    url = "s3://features/run1.zarr"
    info = EncoderInfo(name="tiny", frame_hz=25.0, layer_dims={0: 32, "last": 16})
    writer = open_store(url, mode="a", **s3)
    ids, lengths = [f"v{i}" for i in range(6)], [600, 7, 90, 300, 12, 250]
    write_synthetic(writer, "ds", info, ids, lengths, target_part_bytes=512 * 64)
    with writer.writer("ds", info) as w:
        w.fail("broken", ValueError("bad moov"))
    writer.write_manifest("ds", pd.DataFrame({"video_id": ids, "label": [0, 1, 0, 1, 0, 1]}))

    reader = open_store(url, **s3)
    assert reader.datasets() == ["ds"] and reader.encoders("ds") == ["tiny"]
    for vid, n in zip(ids, lengths, strict=True):
        assert np.array_equal(reader.video("ds", "tiny", vid, 0), synthetic_video(vid, n, 32))
    assert reader.features("ds", "tiny", "last").values.shape == (sum(lengths), 16)
    assert reader.manifest("ds")["label"].sum() == 3
    assert reader.failures("ds", "tiny")["video_id"].tolist() == ["broken"]
    assert verify(reader).ok
    report = compact(writer, "ds", "tiny")
    assert report.parts_after == 1 and report.parts_before > 1
    assert gc(writer, older_than_s=0).removed_uncommitted == ()
    fresh = open_store(url, **s3)
    assert np.array_equal(
        fresh.video("ds", "tiny", "v3", "last"), synthetic_video("v3", 300, 16, layer="last")
    )
    assert verify(fresh).ok
