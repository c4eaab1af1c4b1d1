"""Mid-epoch state for torchdata's StatefulDataLoader, shared by the pipes.

Each pipe's ``state_dict()`` says where its next item comes from in the current epoch, counting what
it holds (a grouper's half-built sample, a shuffle buffer). A pipe resumes its source at the point
recorded with the last item it yielded, so read-ahead is fetched again rather than lost, and only the
shard being read when the state was taken is downloaded again.

A pipe's ``__iter__`` settles its epoch (seed, source position) at once and returns a generator: a
source position taken before the first item must already pin the epoch's seed, which a generator
body would only draw at the first ``next``.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator


# The position after an epoch's last item. Resuming it yields nothing: a DataLoader worker that ran out
# before the others must not replay its share when the loader resumes. The next iteration starts anew.
ENDED = "ended"


def resumable(obj: object) -> bool:
    return callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))


class Resumable:
    """``state_dict``/``load_state_dict`` over ``_pos``: the position in the current epoch (``None``
    before any, ``ENDED`` after one). Pipes replace ``_pos`` rather than change it, so a state handed
    out stays as it was. A loaded position waits in ``_resume`` for the next ``__iter__``, and is what
    a state taken meanwhile reports."""

    _pos: Any = None
    _resume: Any = None

    def state_dict(self) -> dict[str, Any]:
        return {"pos": self._resume if self._resume is not None else self._pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume = state["pos"]

    def _take_resume(self) -> Any:
        resume, self._resume = self._resume, None
        return resume

    def _ended(self) -> Iterator[Any]:
        """The iteration of a resumed, already finished epoch: nothing, and still finished."""
        self._pos = ENDED
        return iter(())


class Epoched(Resumable):
    """A resumable with an epoch counter, settable as with ``DistributedSampler.set_epoch``."""

    epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, **super().state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = state["epoch"]
        super().load_state_dict(state)


class Cursor(Iterator[Any]):
    """Iterates a source and can say, after any item, how to get back there: the source's own state
    when it has one, else the count of items pulled (a restart then skips that many, which is cheap for
    the URL-level sources that lack state)."""

    def __init__(self, source: Iterable[Any], mark: dict[str, Any] | None = None) -> None:
        self.source, self.stateful = source, resumable(source)
        self.count = mark["count"] if mark else 0
        if mark and self.stateful:
            self.source.load_state_dict(mark["source"])  # type: ignore[attr-defined]
        self._it = iter(source)
        if mark and not self.stateful:
            for _ in range(self.count):
                next(self._it)

    def __next__(self) -> Any:
        item = next(self._it)
        self.count += 1
        return item

    def mark(self) -> dict[str, Any]:
        state = self.source.state_dict() if self.stateful else None  # type: ignore[attr-defined]
        return {"count": self.count, "source": state}


def _state_target(dp: object) -> Any:
    """The pipe whose state stands for ``dp``'s: ``dp`` itself, or the first resumable pipe under a
    chain of ``map``s (one item out per item in, nothing held), else ``None``."""
    from torch.utils.data.datapipes.iter import Mapper

    while isinstance(dp, Mapper):
        dp = dp.datapipe
    return dp if resumable(dp) else None


def install_loader_state() -> None:
    """Give torch's ``_IterDataPipeSerializationWrapper`` a state.

    The DataLoader wraps every IterDataPipe in it, and StatefulDataLoader asks only the wrapper for a
    state: without one it replays a resumed epoch from the start, downloading every finished shard
    again. The wrapper now carries the state of the pipe it wraps when that pipe is resumable (ours,
    also under ``.map``), else the count of items it yielded, which it skips after a restore.
    """
    from torch.utils.data.datapipes.datapipe import _IterDataPipeSerializationWrapper as Wrapper

    if hasattr(Wrapper, "state_dict"):
        return
    plain_iter, plain_next = Wrapper.__iter__, Wrapper.__next__

    def state_dict(self: Any) -> dict[str, Any]:
        target = _state_target(self._datapipe)
        if target is not None:
            return {"pipe": target.state_dict()}
        return {"yielded": getattr(self, "_s3pipes_yielded", 0) + getattr(self, "_s3pipes_skip", 0)}

    def load_state_dict(self: Any, state: dict[str, Any]) -> None:
        if "pipe" in state:
            _state_target(self._datapipe).load_state_dict(state["pipe"])
            if self._datapipe_iter is not None:  # StatefulDataLoader loads after iter(): start over from the state
                self._datapipe_iter = iter(self._datapipe)
        else:
            self._s3pipes_skip = state["yielded"]

    def __iter__(self: Any) -> Any:
        self._s3pipes_yielded = 0
        return plain_iter(self)

    def __next__(self: Any) -> Any:
        skip, self._s3pipes_skip = getattr(self, "_s3pipes_skip", 0), 0
        for _ in range(skip):
            plain_next(self)
            self._s3pipes_yielded += 1
        item = plain_next(self)
        self._s3pipes_yielded += 1
        return item

    Wrapper.state_dict, Wrapper.load_state_dict = state_dict, load_state_dict
    Wrapper.__iter__, Wrapper.__next__ = __iter__, __next__
