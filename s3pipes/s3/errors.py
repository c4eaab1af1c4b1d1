"""Error translation for both engines: a failed request becomes a :class:`Failure`, and one table maps
its S3 error code (or HTTP status, or kind of failure) to the built-in exception users catch, with a
message naming the URL and the fix (modelled on s3fs's ``errors.py``)."""

from __future__ import annotations

from typing import Any

import botocore.exceptions
import botocore.parsers

from ..errors import BucketNotFoundError, ObjectChangedError

_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
_THROTTLED = frozenset({"SlowDown", "Throttling", "ThrottlingException"})

# Errors in the body of a response, after the status line: the request is repeated from the byte reached.
BODY_ERRORS = (
    botocore.exceptions.IncompleteReadError,
    botocore.exceptions.ResponseStreamingError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectionClosedError,
    ConnectionError,
    TimeoutError,
)

# The settings hints name, spelled as library users set them; the CLI rewrites each as its own option
# (see ``s3pipes.cli``), so the same message fits both places.
ANONYMOUS = "S3Config(anonymous=True)"
ENDPOINT_ARG = "S3Config(endpoint_url=...)"
_CREDENTIALS_HELP = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE (after `aws configure` or "
    f"`aws sso login`), or run where an instance/task role is attached; for a public bucket use {ANONYMOUS}"
)
# The hint of a missing key names the public function that lists a prefix (a test checks it exists).
LIST_HINT = "s3pipes.list_files"

# (S3 error codes, HTTP statuses as strings, or kinds of failure) -> (exception, message after "{url}: ").
# {endpoint} is the endpoint in use, {setting} where it was set (see env.resolve).
_ROWS: list[tuple[tuple[str, ...], type[Exception], str]] = [
    (("credentials",), PermissionError, "no AWS credentials found to {action}; " + _CREDENTIALS_HELP),
    (("timeout",), TimeoutError, "timed out trying to {action} at {endpoint} after {attempts} attempts ({detail}); "
                                 "check the endpoint and network, or raise S3Config(read_timeout=..., "
                                 "max_attempts=...)"),
    (("connect",), ConnectionError, "cannot connect to the S3 endpoint {endpoint} to {action} after {attempts} "
                                    "attempts ({detail}); check {setting} and the network"),
    (("foreign",), ValueError, "the endpoint {endpoint} does not answer like S3 (HTTP {status} with no S3 error "
                               "document and no x-amz-request-id header) to {action}; check {setting}: it must "
                               "be an S3 API (AWS, MinIO, Ceph ...), not a web server"),
    (("broken",), ConnectionError, "the connection broke while trying to {action} ({detail})"),
    (("protocol",), OSError, "the answer to the request to {action} breaks the S3 protocol ({detail}); a store, "
                             "proxy or cache in between may mishandle Range or If-Match headers"),
    (("NoSuchBucket",), BucketNotFoundError,
     "bucket {bucket!r} does not exist; check the bucket name, the region and the endpoint"),
    (("NoSuchKey", "NotFound", "404"), FileNotFoundError, f"no such object; check the key ({LIST_HINT} lists a prefix)"),
    (("PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException", "301"), ValueError,
     "wrong region or endpoint for bucket {bucket!r}{where}"),
    (("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"), PermissionError,
     "the AWS credentials were rejected ({code}); " + _CREDENTIALS_HELP),
    (("AccessDenied", "AllAccessDisabled", "Forbidden", "403"), PermissionError,
     "access denied to {action} ({code}); check that the credentials in use may read this bucket, or set "
     "S3Config(requester_pays=True) for a requester-pays bucket"),
    (("PreconditionFailed", "412"), ObjectChangedError, "the object changed while it was being read; read it again"),
    (("InvalidRange", "416"), ValueError, "the byte range is outside the object"),
    (("SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "5xx"), ConnectionError,
     "S3 answered {code} to {action} after {attempts} attempts: {message}"),
]
TABLE: dict[str, tuple[type[Exception], str]] = {key: (exc, text) for keys, exc, text in _ROWS for key in keys}
_REFUSED = (OSError, "S3 refused to {action}: {code}: {message}")


class Failure(Exception):
    """A request that failed for good, in one form for both engines. ``kind``: "status" (S3 answered
    ``status`` with ``code``), "foreign" (something that is not S3 answered ``status``), "timeout",
    "connect", "credentials", "broken" (the body broke) or "protocol" (an answer the engine cannot use,
    e.g. a range it did not ask for: retrying would get the same answer); ``detail`` is the engine's
    one-line account."""

    def __init__(self, kind: str, detail: str, status: int = 0, code: str = "", message: str = "",
                 attempts: int = 1, region: str | None = None) -> None:
        super().__init__(detail)
        self.kind, self.detail, self.status, self.code = kind, detail, status, code
        self.message, self.attempts, self.region = message, attempts, region

    @property
    def cause(self) -> str:
        """A one-line account, for the log line of a retry."""
        if self.kind == "status":
            return f"HTTP {self.status} {self.code}"
        return f"{self.kind}: {self.detail.splitlines()[0] if self.detail else ''}"

    @property
    def retryable(self) -> bool:
        return self.kind in ("timeout", "connect") or self.status in _RETRY_STATUS

    @property
    def throttled(self) -> bool:
        return self.status == 503 or self.code in _THROTTLED


def from_botocore(e: BaseException, max_attempts: int) -> Failure | None:
    """The :class:`Failure` of a botocore error (botocore retried it up to ``max_attempts`` times), or
    None for anything else."""
    if isinstance(e, (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError)):
        return Failure("credentials", str(e))
    if isinstance(e, (botocore.exceptions.ConnectTimeoutError, botocore.exceptions.ReadTimeoutError)):
        return Failure("timeout", str(e), attempts=max_attempts)
    if isinstance(e, (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectionError)):
        return Failure("connect", str(e), attempts=max_attempts)
    if isinstance(e, botocore.exceptions.ClientError):
        err: dict[str, Any] = e.response.get("Error", {})
        meta: dict[str, Any] = e.response.get("ResponseMetadata", {})
        headers: dict[str, str] = meta.get("HTTPHeaders", {})
        region = err.get("Region") or headers.get("x-amz-bucket-region")
        status, code = meta.get("HTTPStatusCode") or 0, str(err.get("Code", ""))
        # botocore makes the status the code when the body holds no S3 error document
        kind = "foreign" if code == str(status) and not_s3(status, headers) else "status"
        return Failure(kind, str(e), status, code, str(err.get("Message", e)),
                       int(meta.get("RetryAttempts", 0)) + 1, region)
    if isinstance(e, botocore.parsers.ResponseParserError):  # a body that is not S3's XML at all
        return Failure("foreign", str(e).splitlines()[0])
    if isinstance(e, BODY_ERRORS):
        return Failure("broken", str(e))
    return None


def not_s3(status: int, headers: dict[str, str] | None = None) -> bool:
    """Whether a refusal with no S3 error code came from something other than S3: S3 and its clones
    (MinIO, Ceph, GCS, moto) send an ``x-amz-...`` (or ``x-goog-...``) header with every answer. Only
    4xx: a 5xx may come from a proxy in front of S3, and is retried anyway. ``headers=None`` (obstore,
    which does not show them) decides by the missing error document alone."""
    if not 400 <= status < 500:
        return False
    return headers is None or not any(h.lower().startswith(("x-amz", "x-goog")) for h in headers)


def translate(f: Failure, url: str, action: str, endpoint: str | None = None,
              setting: str = "S3_ENDPOINT_URL / AWS_ENDPOINT_URL") -> Exception:
    """The exception users see for ``f``, a failure to ``action`` on ``url``, sent to ``endpoint``
    (None: AWS) as ``setting`` configured it."""
    code = f.code or str(f.status)
    if f.kind != "status":
        exc, text = TABLE[f.kind]
    elif code in TABLE:  # a status stands for the code only where S3 sent none (HEAD has no body)
        exc, text = TABLE[code]
    elif f.status >= 500:
        exc, text = TABLE["5xx"]
    else:
        exc, text = _REFUSED
    bucket = url[5:].partition("/")[0] if url.startswith("s3://") else url
    where = f"; the bucket is in {f.region}, set AWS_REGION={f.region}" if f.region else ""
    return exc(f"{url}: " + text.format(action=action, attempts=f.attempts, detail=f.detail, code=code,
                                        message=f.message, bucket=bucket, where=where, status=f.status,
                                        endpoint=endpoint or "(AWS)", setting=setting))
