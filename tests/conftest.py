"""A real S3 endpoint for every test: moto's HTTP server on 127.0.0.1, a fresh bucket per test."""

from __future__ import annotations

import logging
import os
import uuid
from typing import Callable, Iterator

import boto3
import pytest
from faultproxy import FaultProxy
from moto.server import ThreadedMotoServer

import s3pipes.s3

# Isolate the suite from the machine's AWS setup: dummy keys, no profile files, no instance metadata.
_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
    # The suite reads with the default engine, obstore, unless a test picks one (test_s3.py runs every
    # test on both). Set here so that DataLoader workers and subprocesses read with it too.
    "S3PIPES_ENGINE": "obstore",
}
_UNSET = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION",
          "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "S3_ENDPOINT_URL")


@pytest.fixture(scope="session", autouse=True)
def endpoint() -> Iterator[str]:
    """The moto server's URL. It is also S3_ENDPOINT_URL for the whole session, DataLoader workers included."""
    for name in _UNSET:
        os.environ.pop(name, None)
    os.environ.update(_ENV)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request drowns real failures
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    os.environ["S3_ENDPOINT_URL"] = url
    yield url
    server.stop()


@pytest.fixture(scope="session", autouse=True)
def _short_worker_joins() -> Iterator[None]:
    """torch joins each DataLoader worker with a 5 s timeout at shutdown. A loader whose worker raised is
    freed by the garbage collector (pytest.raises keeps it in a reference cycle), which may finalise its
    queues before it, so its workers never hear they should stop and every join runs out: 10 s per such
    loader with 2 workers, measured with a plain IterableDataset, and dozens of tests see a worker's error.
    The workers are terminated after the timeout either way; 1 s only ends the wait sooner."""
    from torch.utils.data import _utils

    before, _utils.MP_STATUS_CHECK_INTERVAL = _utils.MP_STATUS_CHECK_INTERVAL, 1.0
    yield
    _utils.MP_STATUS_CHECK_INTERVAL = before


@pytest.fixture(autouse=True)
def _fresh_clients() -> Iterator[None]:
    """Tests change the environment; clients built under another test's environment must not leak."""
    s3pipes.s3._clients.clear()
    yield
    s3pipes.s3._clients.clear()


@pytest.fixture
def spy(endpoint: str) -> Iterator[FaultProxy]:
    """A proxy without faults in front of the server: its ``log`` shows every request a client sends."""
    with FaultProxy(endpoint) as proxy:
        yield proxy


@pytest.fixture(scope="session")
def boto(endpoint: str):  # noqa: ANN201 - a boto3 S3 client
    """A plain boto3 client: the tests' independent way to put and check data."""
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def _new_bucket(boto) -> str:  # noqa: ANN001
    name = f"test-{uuid.uuid4().hex[:16]}"
    boto.create_bucket(Bucket=name)
    return name


@pytest.fixture
def bucket(boto) -> str:  # noqa: ANN001
    """A fresh, empty bucket."""
    return _new_bucket(boto)


@pytest.fixture(scope="module")
def module_bucket(boto) -> str:  # noqa: ANN001
    """A bucket shared by one module's tests, for data that is slow to upload."""
    return _new_bucket(boto)


@pytest.fixture
def put(boto) -> Callable[[str, bytes], str]:  # noqa: ANN001
    """put(url, data) writes one object with plain boto3 and returns the URL."""

    def _put(url: str, data: bytes) -> str:
        bucket, _, key = url[5:].partition("/")
        boto.put_object(Bucket=bucket, Key=key, Body=data)
        return url

    return _put
