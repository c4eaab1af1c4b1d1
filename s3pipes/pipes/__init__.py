"""The DataPipes of s3pipes, one a module; importing registers their functional names."""

from . import _torch_patch
from .buffer_shuffler import BufferShuffler
from .decode import SampleDecoder
from .grouper import SampleGrouper
from .jsonl import JsonlLoader
from .lister import S3Lister
from .parquet import ParquetLoader
from .reader import S3Reader
from .shard_shuffler import ShardShuffler
from .tar import TarExpander
from .tuples import TupleMaker
from .zip import ZipExpander

_torch_patch.install()

__all__ = ["BufferShuffler", "JsonlLoader", "ParquetLoader", "S3Lister", "S3Reader", "SampleDecoder", "SampleGrouper",
           "ShardShuffler", "TarExpander", "TupleMaker", "ZipExpander"]
