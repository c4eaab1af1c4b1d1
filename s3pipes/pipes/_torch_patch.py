"""The one patch of torch's internals: a state for ``_IterDataPipeSerializationWrapper``.

The DataLoader wraps every IterDataPipe in that private class, and StatefulDataLoader asks only the
wrapper for a state: without one it replays a resumed epoch from the start, downloading every finished
shard again. The patch gives the wrapper the state of the pipe it wraps when that pipe is resumable
(ours, also under ``.map``), else the count of items it yielded, which it skips after a restore.

It relies on the wrapper's ``_datapipe`` and ``_datapipe_iter`` attributes, as torch 2.4 to 2.13 have
them. If torch moves them, importing s3pipes fails here with a message saying so, rather than resumes
going quietly wrong.
"""

from __future__ import annotations

from typing import Any

import torch

TESTED = "torch 2.4 to 2.13"


def _state_target(dp: object) -> Any:
    """The pipe whose state stands for ``dp``'s: ``dp`` itself, or the first resumable pipe under a
    chain of ``map``s (one item out per item in, nothing held), else ``None``."""
    from torch.utils.data.datapipes.iter import Mapper

    from ._state import resumable

    while isinstance(dp, Mapper):
        dp = dp.datapipe
    return dp if resumable(dp) else None


def _wrapper_class() -> Any:
    try:
        from torch.utils.data.datapipes.datapipe import _IterDataPipeSerializationWrapper as Wrapper
    except ImportError as e:
        raise ImportError(f"s3pipes: torch {torch.__version__} has no _IterDataPipeSerializationWrapper, which "
                          f"s3pipes patches so that StatefulDataLoader resumes DataPipes ({TESTED} have it); "
                          f"install one of those torch versions") from e
    probe = Wrapper(iter(()))  # type: ignore[arg-type]
    if not (hasattr(probe, "_datapipe") and hasattr(probe, "_datapipe_iter")):
        raise ImportError(f"s3pipes: torch {torch.__version__} changed _IterDataPipeSerializationWrapper (no "
                          f"_datapipe/_datapipe_iter), which s3pipes patches so that StatefulDataLoader resumes "
                          f"DataPipes ({TESTED} work); install one of those torch versions")
    return Wrapper


def install() -> None:
    """Give the wrapper ``state_dict``/``load_state_dict`` (once per process)."""
    Wrapper = _wrapper_class()
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
