"""``from awsio.python.lib.io.s3.s3dataset import S3Dataset`` keeps working: the same objects as s3pipes'."""

from s3pipes.datasets import (
    S3Dataset,
    S3IterableDataset,
    ShuffleDataset,
    file_exists,
    get_file_size,
    list_files,
    reraise_exception,
    tardata,
    zipdata,
)

__all__ = ["S3Dataset", "S3IterableDataset", "ShuffleDataset", "file_exists", "get_file_size", "list_files",
           "reraise_exception", "tardata", "zipdata"]
