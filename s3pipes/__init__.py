"""s3pipes: stream training data from S3 straight into PyTorch."""

from .config import S3Config
from .datasets import S3Dataset, S3IterableDataset, ShuffleDataset, file_exists, get_file_size, list_files
from .errors import BucketNotFoundError, CorruptArchiveError, ObjectChangedError
from .pipes import BufferShuffler, S3Lister, S3Reader, SampleGrouper, ShardShuffler, TarExpander, ZipExpander
from .s3 import ObjectInfo, S3Client, S3Url, parse_url

__all__ = [
    "BucketNotFoundError",
    "BufferShuffler",
    "CorruptArchiveError",
    "ObjectChangedError",
    "ObjectInfo",
    "S3Client",
    "S3Config",
    "S3Dataset",
    "S3IterableDataset",
    "S3Lister",
    "S3Reader",
    "S3Url",
    "SampleGrouper",
    "ShardShuffler",
    "ShuffleDataset",
    "TarExpander",
    "ZipExpander",
    "file_exists",
    "get_file_size",
    "list_files",
    "parse_url",
]
__version__ = "0.1.0"
