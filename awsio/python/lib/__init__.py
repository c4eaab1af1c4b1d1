"""The import path of the archived Amazon S3 plugin for PyTorch, served by s3pipes."""
