"""s3pipes: stream training data from S3 straight into PyTorch."""

from .config import S3Config
from .s3 import BucketNotFoundError, ObjectChangedError, ObjectInfo, S3Client, S3Url, parse_url

__all__ = [
    "BucketNotFoundError",
    "ObjectChangedError",
    "ObjectInfo",
    "S3Client",
    "S3Config",
    "S3Url",
    "parse_url",
]
__version__ = "0.1.0"
