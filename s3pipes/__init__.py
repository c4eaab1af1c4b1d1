"""s3pipes: stream training data from S3 straight into PyTorch."""

from .accounting import usage
from .cache import ShardCache
from .checkpoint import load, save
from .config import S3Config
from .datasets import S3Dataset, S3IterableDataset, ShuffleDataset, file_exists, get_file_size, list_files
from .errors import (BucketNotFoundError, CorruptArchiveError, CorruptDataError, DecodeError, ObjectChangedError,
                     StaleIndexError)
from .index import Index, build_index, find_index
from .pipes import (BufferShuffler, JsonlLoader, ParquetLoader, S3Lister, S3Reader, SampleDecoder, SampleGrouper,
                    ShardShuffler, TarExpander, TupleMaker, ZipExpander)
from .s3 import ObjectInfo, S3Client, S3Url, S3Writer, parse_url
from .samples import TarSamples
from .s3.usage import S3_STANDARD, Prices, Usage
from .stores import FsspecClient, client_for

__all__ = [
    "BucketNotFoundError",
    "BufferShuffler",
    "CorruptArchiveError",
    "CorruptDataError",
    "DecodeError",
    "FsspecClient",
    "Index",
    "JsonlLoader",
    "ObjectChangedError",
    "ObjectInfo",
    "ParquetLoader",
    "Prices",
    "S3Client",
    "S3_STANDARD",
    "S3Config",
    "S3Dataset",
    "S3IterableDataset",
    "S3Lister",
    "S3Reader",
    "S3Url",
    "S3Writer",
    "SampleDecoder",
    "SampleGrouper",
    "ShardCache",
    "ShardShuffler",
    "ShuffleDataset",
    "StaleIndexError",
    "TarExpander",
    "TarSamples",
    "TupleMaker",
    "Usage",
    "ZipExpander",
    "build_index",
    "file_exists",
    "find_index",
    "get_file_size",
    "list_files",
    "client_for",
    "load",
    "parse_url",
    "save",
    "usage",
]
__version__ = "0.1.0"
