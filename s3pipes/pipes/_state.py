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
  in place, so a state handed out stays as it was); a pipe whose epoch is a list leaves ``_pos`` at the
  run's start and counts with :class:`Counted` instead, which builds the position when asked. After the epoch's last item the position is
  ended (:func:`ended`): loaded, it yields nothing (a worker that ran out before the others must not
  replay its share) but restores its sources, whose epochs go on; the iteration after it begins the
  next epoch.

A position is a plain dict (a TypedDict per pipe) that records its epoch: loader states are saved with
``torch.save`` and read back with ``torch.load(weights_only=True)``, which refuses classes of ours.
"""

from __future__ import annotations

from operator import length_hint
from typing import Any, Generic, Iterable, Iterator, Sequence, TypedDict, TypeVar, Union

import torch

from .. import accounting


def ended(pos: Any) -> bool:
    """Whether a position is after its epoch's last item."""
    return isinstance(pos, dict) and bool(pos.get("ended"))


T = TypeVar("T")
Positions = Union[Sequence[int], torch.Tensor]  # where items are in the listing (a tensor after a shuffle)
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
        self.count = self.began = mark["count"] if mark else 0
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

    def rest(self) -> list[Any]:
        """Every item left, pulled without a Python call per item (a million shards' URLs)."""
        items = list(self._it)
        self.count += len(items)
        return items

    def positions(self) -> Positions | None:
        """Where each item pulled is in the listing of ``list_s3``, if the source knows (see
        :class:`Listed`) and was read from its start."""
        return self.source.positions() if isinstance(self.source, Listed) and self.began == 0 else None

    def mark(self) -> Mark:
        state = self.source.state_dict() if self.stateful else None  # type: ignore[attr-defined]
        return {"count": self.count, "source": state}


class Counted:
    """The items of a list from the ``yielded``-th on, for a pipe whose epoch is a list (the listing, the
    shards' order), at the speed of a list iterator: how many were yielded is read off the iterator when
    a position is asked for, since building a position for every item cost seconds over a million shards.
    ``origin`` is the position the run began from (the pipe's ``_pos`` until its epoch ends);
    ``positions``, where each item is in the lister's listing, if known (see :meth:`Listed.positions`)."""

    def __init__(self, origin: dict[str, Any], items: list[Any], positions: Positions | None = None) -> None:
        self.origin, self.yielded = origin, origin["yielded"]
        self.items = items[self.yielded:] if self.yielded else items
        self.it = iter(self.items)
        self.positions = positions if not self.yielded else None

    def __iter__(self) -> Iterator[Any]:
        return self.it

    def position(self, pos: Any) -> Any:
        """``pos``, and if it is this run's origin, with the items yielded so far."""
        if pos is not self.origin:  # ended, or another epoch begun
            return pos
        return {**pos, "yielded": self.yielded + len(self.items) - length_hint(self.it)}

    def __reduce__(self) -> Any:
        return type(None), ()  # a copy of the pipe (a worker's) starts runs of its own: pickled as None


class Listed:
    """What the pipes whose epoch is a list share: a :class:`Counted` run, and where its items are in
    the listing, which spares a reader planning an epoch by samples from looking up a million URLs."""

    _counted: Counted | None = None
    _pos: Any

    def _position(self) -> Any:
        return self._counted.position(self._pos) if self._counted is not None else self._pos

    def positions(self) -> Positions | None:
        """Where each item of the epoch now running is in the listing of ``list_s3``, if this pipe knows
        and the run began at the epoch's start, else ``None``."""
        return self._counted.positions if self._counted is not None else None
