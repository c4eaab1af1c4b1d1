"""Checkpoints straight to and from any store: ``torch.save`` into a multipart upload, ``torch.load``
from parallel ranged reads, with no temporary file."""

from __future__ import annotations

import io
from typing import Any

import torch

from .config import S3Config
from .stores import client_for


def save(obj: object, url: str, config: S3Config | None = None, **torch_save_kwargs: Any) -> None:
    """``torch.save(obj)`` to ``url``, streamed in parts as torch writes them. The object appears only
    once the whole checkpoint is written: an error mid-save aborts the upload, so the previous
    checkpoint at ``url`` (if any) is left as it was.

    Example:
        >>> import torch, s3pipes
        >>> s3pipes.save(torch.nn.Linear(2, 2).state_dict(), "memory://ckpt/step-1.pt")
        >>> sorted(s3pipes.load("memory://ckpt/step-1.pt"))
        ['bias', 'weight']
    """
    with client_for(url, config).open_write(url) as f:
        torch.save(obj, f, **torch_save_kwargs)


def load(url: str, map_location: Any = None, config: S3Config | None = None, **torch_load_kwargs: Any) -> Any:
    """``torch.load`` of the checkpoint at ``url``, downloaded into memory as parallel ranged GETs
    (``torch.load`` seeks around the archive, so it is read whole first rather than streamed)."""
    data = client_for(url, config).read(url)
    return torch.load(io.BytesIO(data), map_location=map_location, **torch_load_kwargs)
