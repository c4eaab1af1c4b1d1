"""Where a pipe or wrapper is in its epoch: the one resume protocol of s3pipes.

Every resumable pipe and wrapper derives from :class:`Resumable` and follows it the same way (as
torchdata.nodes does with ``reset(state)``, ``next`` and ``get_state``):

- ``load_state_dict(state)`` keeps ``state`` for the next ``__iter__``: StatefulDataLoader restores a
  dataset before it iterates it. A state taken meanwhile reports the loaded one unchanged.
- ``__iter__`` settles the epoch at once: the loaded position or :meth:`Resumable._begin` (a new epoch),
  and the source opened there (its ``__iter__`` settles its own epoch in turn, so the shuffle seeds of
  the whole chain are pinned). It returns the generator :meth:`Resumable._run` that goes on from there.
  ``__iter__`` is no generator function: StatefulDataLoader snapshots a worker right after ``iter()``,
  before its first item (with persistent workers, as every epoch starts), and that snapshot must
  already describe the new epoch.
- ``_run`` replaces ``self._pos`` with its position after each item it yields (replaced, never changed
  in place, so a state handed out stays as it was). After the epoch's last item the position is
  ended (:func:`ended`): loaded, it yields nothing (a worker that ran out before the others must not
  replay its share) but restores its sources, whose epochs go on; the iteration after it begins the
  next epoch.

A position is a plain dict (a TypedDict per pipe) that records its epoch: loader states are saved with
``torch.save`` and read back with ``torch.load(weights_only=True)``, which refuses classes of ours.
"""

from __future__ import annotations

from typing import Any, Generic, Iterable, Iterator, TypedDict, TypeVar

from .. import accounting


def ended(pos: Any) -> bool:
    """Whether a position is after its epoch's last item."""
    return isinstance(pos, dict) and bool(pos.get("ended"))


T = TypeVar("T")
P = TypeVar("P", bound=dict)  # a pipe's position: a TypedDict with at least "epoch" and "source"


class Mark(TypedDict):
    """How to get back to a point of a source: items pulled, and the source's own state if it has one."""

    count: int
    source: Any


class State(TypedDict):
    """What ``state_dict()`` returns: the epoch the next fresh iteration begins, and the position."""

    epoch: int
    pos: Any  # the pipe's position (ended or not), or None before any iteration


def resumable(obj: object) -> bool:
    return callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))


class Resumable(Generic[P, T]):
    """The template of every resumable pipe and wrapper: subclasses give :meth:`_begin` and :meth:`_run`."""

    epoch: int = 0
    _pos: Any = None  # P, an ended position, or None
    _loaded: Any = None

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        self = super().__new__(cls)
        # Made where the pipe is built, before any copy reaches a worker: its workers' requests add up
        # under one token (see accounting); __new__, so that no subclass has to remember it.
        self._tally = accounting.Tally()
        return self

    def _begin(self) -> P:
        """The position at the start of a new epoch, numbered ``self.epoch``, its source not yet opened."""
        raise NotImplementedError

    def _source(self, start: P) -> Cursor:
        """The source, opened at ``start["source"]`` (``None``: its start)."""
        return Cursor(self.source_datapipe, start["source"])  # type: ignore[attr-defined]

    def _run(self, start: P, src: Cursor) -> Iterator[T]:
        """The items from ``start`` on, read from ``src``, setting ``self._pos`` before each is yielded."""
        raise NotImplementedError

    def _position(self) -> Any:
        """The position now; a pipe that holds changing data (a buffer) builds it here."""
        return self._pos

    def set_epoch(self, epoch: int) -> None:
        """Number the next epoch, as with ``DistributedSampler.set_epoch``."""
        self.epoch = epoch

    def state_dict(self) -> State:
        return {"epoch": self.epoch, "pos": self._loaded if self._loaded is not None else self._position()}

    def load_state_dict(self, state: State) -> None:
        self.epoch, self._loaded = state["epoch"], state["pos"]

    def __iter__(self) -> Iterator[T]:
        loaded, self._loaded = self._loaded, None
        start: Any = loaded if loaded is not None else self._begin()
        self.epoch = start["epoch"] + 1
        accounting.begin(self)
        if ended(start):
            if start["source"]["source"] is not None:  # a stateful source takes up its epochs from there
                self._source(start)
            self._pos = start
            accounting.end(self)  # an epoch all the same, for the sum over workers
            return iter(())
        src = self._source(start)
        if start["source"] is None:
            start = {**start, "source": src.mark()}
        self._pos = start
        return self._epoch(start, src)

    def _epoch(self, start: P, src: Cursor) -> Iterator[T]:
        yield from self._run(start, src)
        self._pos = {"epoch": start["epoch"], "source": src.mark(), "ended": True}
        accounting.end(self)


class Cursor(Iterator[Any]):
    """Iterates a source and can say, after any item, how to get back there: the source's own state
    when it has one, else the count of items pulled (a restart then skips that many, which is cheap for
    the URL-level sources that lack state)."""

    def __init__(self, source: Iterable[Any], mark: Mark | None = None) -> None:
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

    def mark(self) -> Mark:
        state = self.source.state_dict() if self.stateful else None  # type: ignore[attr-defined]
        return {"count": self.count, "source": state}
