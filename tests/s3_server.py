"""An S3 server on 127.0.0.1 for tests (moto's), with a bucket; import the fixture to use it.

>>> from s3_server import s3  # noqa: F401  (a fixture)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

BUCKET = "features"
CREDENTIALS = {"key": "test", "secret": "test"}


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, Any]]:
    """Storage options reaching a fresh moto server with bucket ``features``."""
    moto_server = pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    import boto3

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=CREDENTIALS["key"],
        aws_secret_access_key=CREDENTIALS["secret"],
        region_name="us-east-1",
    ).create_bucket(Bucket=BUCKET)
    try:
        yield {"endpoint_url": endpoint, **CREDENTIALS}
    finally:
        server.stop()
