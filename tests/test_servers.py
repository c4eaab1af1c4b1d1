"""What other S3 implementations, gateways and caches do differently (found against s3rver 3.7.1),
played by the fault proxy in front of moto: a refused abort, a range answered with 200 or (on an
empty object) with a 206, and If-Match ignored."""

from __future__ import annotations

import logging
import threading
import time
import urllib.parse

import pytest
from faultproxy import Fault, FaultProxy, Request

from s3pipes import ObjectChangedError, S3Client, S3Config

ENGINES = ("obstore", "boto3")
GETS = 50  # enough rewrites for every GET a test makes


def _is_get(method: str, path: str) -> bool:
    return method == "GET" and "list-type=" not in path


@pytest.mark.parametrize("status", [405, 403])
def test_refused_abort_keeps_the_users_error_and_logs_the_upload(endpoint: str, bucket: str, boto, caplog,  # noqa: ANN001
                                                                 status: int) -> None:
    url = f"s3://{bucket}/big.bin"
    aborts = lambda m, p: m == "DELETE" and "uploadId=" in p  # noqa: E731
    with FaultProxy(endpoint, script=[Fault.error(status)] * 5, applies=aborts) as proxy, \
            caplog.at_level(logging.WARNING, logger="s3pipes"):
        with pytest.raises(ValueError, match="^mine$"):
            with S3Client(S3Config(endpoint_url=proxy.url, part_size=5 << 20)).open_write(url) as f:
                f.write(b"x" * (6 << 20))  # one part sent: a multipart upload is under way
                raise ValueError("mine")
        deletes = [r for r in proxy.log if aborts(r.method, r.path)]
    assert deletes, "the writer never tried to abort"
    upload_id = urllib.parse.parse_qs(urllib.parse.urlsplit(deletes[0].path).query)["uploadId"][0]
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert upload_id in warning and url in warning and "abort-multipart-upload" in warning
    assert boto.list_multipart_uploads(Bucket=bucket).get("Uploads"), "a refused abort leaves the upload in place"
