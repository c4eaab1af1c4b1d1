"""Exceptions of s3pipes beyond the built-in ones; each subclasses the built-in exception users catch."""


class BucketNotFoundError(FileNotFoundError):
    """The bucket does not exist (at this endpoint and region)."""


class ObjectChangedError(OSError):
    """The object was replaced while it was being read; its parts would not belong together."""


class CorruptArchiveError(ValueError):
    """A tar or zip shard could not be read; the message names the shard and, where known, the member."""


class CorruptDataError(ValueError):
    """A JSON lines or Parquet object could not be read; the message names it and, for JSON lines, the line."""


class StaleIndexError(ObjectChangedError):
    """A shard no longer matches the prefix's index (changed, resized or gone); the message names the
    shard and the command that rebuilds the index."""


class DecodeError(ValueError):
    """A sample's member could not be decoded (``decode()``); the message names the shard and member."""
