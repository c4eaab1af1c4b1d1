"""S3 requests per epoch, summed over DataLoader workers: :func:`usage`, and one INFO line per epoch.

DataLoader workers are separate processes (forked or spawned), each with its own counters
(:mod:`s3pipes.s3.usage`). Every pipe carries a :class:`Tally` made where the pipe was built (in the
main process): a token and the folder (in ``/dev/shm`` when there is one) that the main process
removes at exit. While the outermost of our pipes runs an epoch in a process, that process writes its
requests since the epoch began to one small file per (token, worker) there: when the epoch begins,
about once a second, and when it ends. The worker that ends last (all files of its epoch say ended)
logs their sum, once: an ``O_EXCL`` marker decides between workers that end together.

An epoch of a loader's workers is told apart from the previous one by the loader's base seed (one per
``iter(loader)``, shared by its workers) and the count of epochs this process has begun for the token
(persistent workers keep their base seed): workers started together count alike.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import astuple
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, get_worker_info
from torch.utils.data.datapipes.iter import IterableWrapper
from torch.utils.data.graph import traverse_dps

from . import _dist
from .s3.usage import Usage, process_usage

log = logging.getLogger(__name__)

_BASE = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
_FLUSH_EVERY = 1.0  # seconds between the writes of an open epoch: usage() mid-epoch is that stale


class Tally:
    """What a pipe carries so that its workers' requests can be summed: a token made where the pipe
    was built, that process's id (it owns the folder) and the rank captured there (a spawned worker
    has no ``torch.distributed``). Copies, pickles and forks keep the token."""

    def __init__(self) -> None:
        self.token, self.owner, self.rank = uuid.uuid4().hex[:16], os.getpid(), _dist.current()
        if self.owner not in _owners:  # the folder goes when its owner exits (not a worker of it)
            _owners.add(self.owner)
            atexit.register(_remove, self.folder, self.owner)

    @property
    def folder(self) -> str:
        return os.path.join(_BASE, f"s3pipes-usage-{os.getuid()}-{self.owner}")

    def __getstate__(self) -> dict[str, Any]:
        # Pickled in the main process as spawned workers start: the last moment the rank is known for sure.
        return {**self.__dict__, "rank": _dist.current() or self.rank}


_owners: set[int] = set()


def _remove(folder: str, owner: int) -> None:
    if os.getpid() == owner:
        shutil.rmtree(folder, ignore_errors=True)


class _Epoch:
    """An epoch open in this process: where it is written, and the counters when it began."""

    def __init__(self, tally: Tally, group: str, key: str, workers: int) -> None:
        self.tally, self.group, self.workers = tally, group, workers
        self.path = os.path.join(tally.folder, f"{tally.token}.{key}.json")
        self.began, self.start = time.time(), process_usage()

    def write(self, ended: bool) -> None:
        record = {"group": self.group, "began": self.began, "ended": ended, "workers": self.workers,
                  "usage": astuple(process_usage() - self.start)}
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(record, f)
            os.replace(tmp, self.path)  # readers see the old record or the new, never half of one
        except OSError as e:  # a full /dev/shm loses the count, never the training
            log.debug("could not write %s: %s", self.path, e)


_lock = threading.Lock()  # the open epochs, and their files, between the pipe's thread and the flusher
_open: dict[str, _Epoch] = {}  # token -> the epoch open in this process
_begun: dict[str, int] = {}  # token -> epochs begun in this process
_flusher: list[int] = []  # the pid whose flusher thread runs


def _after_fork() -> None:
    global _lock
    _lock = threading.Lock()
    _open.clear()
    _begun.clear()
    _flusher.clear()


os.register_at_fork(after_in_child=_after_fork)


def _outermost(pipe: object) -> bool:
    """Whether no other pipe of ours is iterating ``pipe``: the one whose epoch is the process's. Our
    pipes up the call stack are found by their frames (a source is opened, and a lazy one first
    pulled, from a frame of the pipe above it), once per epoch."""
    frame = sys._getframe(2)
    while frame is not None:
        owner = frame.f_locals.get("self")
        if owner is not pipe and isinstance(getattr(owner, "_tally", None), Tally):
            return False
        frame = frame.f_back  # type: ignore[assignment]
    return True


def begin(pipe: Any) -> None:
    """An epoch of ``pipe`` begins in this process; called by the pipe's ``__iter__``."""
    if not _outermost(pipe):
        return
    tally: Tally = pipe._tally
    try:
        os.makedirs(tally.folder, mode=0o700, exist_ok=True)
        if os.lstat(tally.folder).st_uid != os.getuid():  # a folder another user made in /dev/shm
            raise PermissionError(f"{tally.folder} belongs to another user")
    except OSError as e:
        log.warning("not accounting S3 requests per epoch: %s", e)
        return
    info = get_worker_info()
    n = _begun[tally.token] = _begun.get(tally.token, -1) + 1
    if info is None:
        epoch = _Epoch(tally, f"main-{n}", "main", 1)
    else:
        epoch = _Epoch(tally, f"{info.seed - info.id}-{n}", f"w{info.id}", info.num_workers)
    with _lock:
        _open[tally.token] = epoch
        epoch.write(False)
        if _flusher != [os.getpid()]:
            _flusher[:] = [os.getpid()]
            threading.Thread(target=_flush, name="s3pipes-usage", daemon=True).start()


def end(pipe: Any) -> None:
    """The epoch of ``pipe`` ends in this process; the last of its workers to end logs the sum."""
    with _lock:
        epoch = _open.pop(pipe._tally.token, None)
        if epoch is None:
            return
        epoch.write(True)
    records = [r for r in _records(epoch.tally) if r["group"] == epoch.group]
    if sum(r["ended"] for r in records) < epoch.workers or not _first(epoch):
        return
    rank = _dist.current() or epoch.tally.rank
    who = f"rank {rank[0]} of {rank[1]}, " if rank else ""
    workers = f"{epoch.workers} workers" if epoch.workers > 1 else "1 process"
    log.info("S3 requests this epoch (%s%s): %s", who, workers, sum((_usage(r) for r in records), Usage()))


def _first(epoch: _Epoch) -> bool:
    """Whether this process is the first to claim the epoch's log line."""
    try:
        os.close(os.open(os.path.join(epoch.tally.folder, f"{epoch.tally.token}.{epoch.group}.logged"),
                         os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return False
    return True


def _flush() -> None:
    while True:
        time.sleep(_FLUSH_EVERY)
        with _lock:
            for epoch in _open.values():
                epoch.write(False)


def _records(tally: Tally) -> list[dict[str, Any]]:
    records = []
    prefix = f"{tally.token}."
    try:
        names = [n for n in os.listdir(tally.folder) if n.startswith(prefix) and n.endswith(".json")]
    except FileNotFoundError:
        return []
    for name in names:
        try:
            with open(os.path.join(tally.folder, name)) as f:
                records.append(json.load(f))
        except (FileNotFoundError, ValueError):  # removed meanwhile: the folder's owner is exiting
            continue
    return records


def _usage(record: dict[str, Any]) -> Usage:
    return Usage(*record["usage"])


def _find(obj: object) -> Any:
    """The outermost of our pipes in ``obj`` (a pipe, a dataset, a DataPipe graph, a DataLoader), the
    one whose epochs are accounted; None if there is none."""
    found = _held(obj)
    if found is not None or isinstance(obj, (str, bytes, list, tuple, dict)):
        return found
    try:
        level = list(traverse_dps(obj).values())  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - not a graph torch can walk (it pickles it): no pipe of ours in it
        return None
    while level:  # breadth first: the pipe nearest the top is the outermost
        for dp, _ in level:
            found = _held(dp)
            if found is not None:
                return found
        level = [child for _, graph in level for child in graph.values()]
    return None


def _held(obj: object) -> Any:
    """``obj`` if it is one of our pipes, or the pipe of the dataset it holds where torch's graph does not look."""
    if isinstance(getattr(obj, "_tally", None), Tally):
        return obj
    if isinstance(obj, DataLoader):
        return _find(obj.dataset)
    if isinstance(obj, IterableWrapper):  # it holds (and deep-copies) a dataset
        return _find(obj.iterable)
    return None


def usage(obj: object = None, *, all_ranks: bool = False) -> Usage:
    """S3 requests and bytes: with ``obj``, of its current (or last) epoch, summed over this process
    and its DataLoader workers; with ``None``, of this process since it started.

    Counts are of HTTP attempts sent, so a retried GET counts twice (and once in ``retries``). Workers
    report about once a second while an epoch runs, and at its end. Requests made while no epoch of
    ``obj`` runs (a ``len()`` that lists) are not in its epochs; a process counts all its requests in the
    epoch open in it, so two loaders without workers, read in turns, each count both. Stores other than
    ``s3://`` (local paths, ``memory://``) make no S3 requests.

    Args:
        obj: a pipe, a dataset, a DataPipe graph or a DataLoader over one (default ``None``: this process).
        all_ranks: sum over ``torch.distributed`` ranks (default ``False``). This is a collective: every
            rank must call it, as with ``all_reduce``.

    Example:
        >>> import fsspec, s3pipes
        >>> from torch.utils.data import DataLoader
        >>> from torch.utils.data.datapipes.iter import IterableWrapper
        >>> fsspec.filesystem("memory").pipe("/usage-doc/a.bin", b"abc")
        >>> dp = IterableWrapper(["memory://usage-doc/"]).list_s3().read_s3()  # or s3://bucket/prefix/
        >>> loader = DataLoader(dp, batch_size=None)
        >>> [url for url, _ in loader]
        ['memory://usage-doc/a.bin']
        >>> print(s3pipes.usage(loader))  # memory:// makes no S3 requests
        LIST 0 · HEAD 0 · GET 0 · PUT 0 · 0 B in · 0 B out · 0 retries · 0 throttled · ≈$0 (S3 Standard prices)
        >>> s3pipes.usage().requests >= 0  # this process, all epochs
        True
    """
    if obj is None:
        total = process_usage()
    else:
        pipe = _find(obj)
        if pipe is None:
            raise TypeError(f"{type(obj).__name__} holds no s3pipes pipe or dataset; pass the pipe, the dataset "
                            f"or the DataLoader that reads through one")
        with _lock:  # this process's own open epoch, as of now
            if pipe._tally.token in _open:
                _open[pipe._tally.token].write(False)
        records = _records(pipe._tally)
        group = max(records, key=lambda r: r["began"])["group"] if records else None
        total = sum((_usage(r) for r in records if r["group"] == group), Usage())
    if all_ranks and _dist.current():
        cuda = dist.get_backend() == "nccl"  # NCCL reduces CUDA tensors only
        t = torch.tensor(astuple(total), dtype=torch.int64,
                         device=torch.device("cuda", torch.cuda.current_device()) if cuda else None)
        dist.all_reduce(t)
        total = Usage(*t.tolist())
    return total
