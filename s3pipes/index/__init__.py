"""The index of a prefix: what every shard holds, in one object beside them.

- :mod:`.format`: ``Index``, ``Shard``, the file and its reasons
- :mod:`.scan`: one shard's entry, read with as few bytes as the store allows
- :mod:`.build`: ``build_index`` (threads, and ranks under torch.distributed) and ``find_index``
"""

from .build import build_index, find_index, listed
from .format import INDEX_NAME, Index, Shard, count_samples

__all__ = ["INDEX_NAME", "Index", "Shard", "build_index", "count_samples", "find_index", "listed"]
