"""Where requests go and what sends them: settings resolved from the config and the environment, and
the per-process cache of boto3 clients, GET engines and thread pools.

A client object holds only its :class:`~s3pipes.config.S3Config`, so it pickles to DataLoader workers;
everything here is built lazily, once per process (keyed by pid), because neither boto3's clients nor
obstore's tokio runtime are safe to share across ``fork``.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import boto3
import botocore.config
import botocore.exceptions
from botocore import UNSIGNED

from ..config import S3Config
from . import usage
from .engine import Engine
from .engine_boto3 import Boto3Engine
from .errors import ENDPOINT_ARG
from .retry import install_retries

try:
    from . import engine_obstore
except ImportError:  # obstore is not installed: boto3 does everything
    engine_obstore = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

DEFAULT_REGION = "us-west-2"
_ENDPOINT_VARS = ("S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


@dataclass(frozen=True)
class Resolved:
    region: str
    endpoint_url: str | None
    path_style: bool
    verify: bool
    endpoint_setting: str  # where the endpoint was set, in the words of a hint


def resolve(cfg: S3Config) -> Resolved:
    """The config's settings, with fields left at None read from the environment (see S3Config)."""
    setting = ENDPOINT_ARG if cfg.endpoint_url else next((v for v in _ENDPOINT_VARS if os.environ.get(v)), None)
    endpoint = cfg.endpoint_url or (os.environ[setting] if setting else None)
    if endpoint and "://" not in endpoint:  # botocore's "Invalid endpoint: host:port" suggests nothing
        raise ValueError(f"endpoint {endpoint!r} (set by {setting}) has no scheme: add http:// or https://, "
                         f"e.g. http://{endpoint}")
    region = cfg.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not region:
        region = _session(cfg).region_name
    path_style = cfg.path_style if cfg.path_style is not None else endpoint is not None
    verify = cfg.verify_ssl if cfg.verify_ssl is not None else os.environ.get("S3_VERIFY_SSL", "1") != "0"
    return Resolved(region or DEFAULT_REGION, endpoint, path_style, verify,
                    setting or f"S3_ENDPOINT_URL or {ENDPOINT_ARG}")


def engine_name(cfg: S3Config) -> str:
    """``"obstore"`` or ``"boto3"``: the config's choice, else ``S3PIPES_ENGINE``, else obstore if installed."""
    name = cfg.engine if cfg.engine != "auto" else os.environ.get("S3PIPES_ENGINE", "auto")
    if name == "auto":
        name = "obstore" if engine_obstore is not None else "boto3"
    if name not in ("obstore", "boto3"):
        raise ValueError(f"S3PIPES_ENGINE must be 'obstore', 'boto3' or 'auto', got {name!r}")
    if name == "obstore" and engine_obstore is None:
        raise ValueError("engine 'obstore' is not installed; pip install obstore, or use S3Config(engine='boto3')")
    if name == "obstore" and engine_obstore.forked_after_use:
        return "boto3"  # the parent said why, once, when it forked (_before_fork)
    return name


# Whether this process tree has been told that its forks read with boto3. Inherited by forked children,
# so the warning comes once from the process that forks (2 loaders x 3 workers: one line), not from each.
_warned_fork: list[bool] = []


def _before_fork() -> None:
    if engine_obstore is not None and not _warned_fork and engine_obstore.runtime_started():
        _warned_fork.append(True)
        log.warning("pid %d forks after obstore read here, and tokio cannot follow a fork: the forked "
                    "processes (DataLoader workers) read S3 with boto3. To keep obstore, start the "
                    "DataLoader's workers before the first read in this process, or pass "
                    "DataLoader(..., multiprocessing_context='spawn' or 'forkserver')", os.getpid())
_lock = threading.Lock()
# (pid, config) -> boto3 client; (pid, config, bucket, engine name) -> engine
_clients: dict[tuple[Any, ...], Any] = {}
_pools: dict[tuple[int, int], ThreadPoolExecutor] = {}


def _after_fork() -> None:
    # A lock held by another thread at fork time would stay held forever in the child.
    global _lock
    _lock = threading.Lock()
    _clients.clear()
    _pools.clear()


os.register_at_fork(before=_before_fork, after_in_child=_after_fork)
atexit.register(_clients.clear)  # drop obstore stores while the interpreter can still run their finalizers


def reset_clients() -> None:
    """Forget this process's clients, so the next one reads the environment again: for a process that
    changes ``S3_ENDPOINT_URL`` or credentials after it has made requests (a notebook, the demo)."""
    with _lock:
        _clients.clear()


def _cached(key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
    value = _clients.get(key)
    if value is None:
        with _lock:  # boto3 sessions are not thread-safe, and one store per bucket is enough
            value = _clients.get(key)
            if value is None:
                value = _clients[key] = build()
                log.debug("built %s in pid %d", type(value).__name__, os.getpid())
    return value


def boto_client(cfg: S3Config) -> Any:
    """This process's boto3 S3 client for ``cfg``."""

    def build() -> Any:
        r = resolve(cfg)
        bc = botocore.config.Config(
            region_name=r.region,
            signature_version=UNSIGNED if cfg.anonymous else None,
            s3={"addressing_style": "path" if r.path_style else "auto"},
            retries={"total_max_attempts": cfg.max_attempts, "mode": "standard"},
            connect_timeout=cfg.connect_timeout,
            read_timeout=cfg.read_timeout,
            max_pool_connections=cfg.max_concurrency + 4,
            tcp_keepalive=True,
        )
        client = _session(cfg).client("s3", endpoint_url=r.endpoint_url, config=bc, verify=r.verify)
        install_retries(client, cfg.max_attempts)
        client.meta.events.register("before-send.s3", usage.on_send, unique_id="s3pipes-usage")
        return client

    return _cached((os.getpid(), cfg), build)


def engine_for(cfg: S3Config, bucket: str, key: str) -> Engine:
    """The GET engine for ``key`` in ``bucket``: the configured one, but boto3 for keys obstore cannot name."""
    name = engine_name(cfg)
    if name == "obstore" and not engine_obstore.representable(key):
        name = "boto3"
    if name == "boto3":
        client = boto_client(cfg)  # outside _cached: it takes the same lock
        return _cached((os.getpid(), cfg, bucket, name),
                       lambda: Boto3Engine(client, bucket, cfg.max_attempts, cfg.requester_pays))

    def build() -> Engine:
        r = resolve(cfg)
        creds = None if cfg.anonymous else _credentials(_session(cfg))
        return engine_obstore.ObstoreEngine(bucket, cfg, r.region, r.endpoint_url, r.path_style, r.verify, creds)

    return _cached((os.getpid(), cfg, bucket, name), build)


def _session(cfg: S3Config) -> boto3.session.Session:
    try:
        return boto3.session.Session(profile_name=cfg.profile)
    except botocore.exceptions.ProfileNotFound as e:
        raise ValueError(f"AWS profile {cfg.profile!r} is not configured: {e}") from None


def _credentials(session: boto3.session.Session) -> Callable[[], tuple[str, str, str | None]]:
    """Boto3's credential chain as a callable for obstore: boto3 stays the one source of credentials,
    and refreshes role and SSO credentials itself."""
    lock = threading.Lock()

    def frozen() -> tuple[str, str, str | None]:
        with lock:
            creds = session.get_credentials()
            if creds is None:
                raise botocore.exceptions.NoCredentialsError()
            f = creds.get_frozen_credentials()
        return f.access_key, f.secret_key, f.token

    return frozen


def pool(size: int) -> ThreadPoolExecutor:
    """This process's pool of ``size`` threads for ranged parts and uploads."""
    key = (os.getpid(), size)
    p = _pools.get(key)
    if p is None:
        with _lock:
            p = _pools.setdefault(key, ThreadPoolExecutor(size, thread_name_prefix="s3pipes"))
    return p
