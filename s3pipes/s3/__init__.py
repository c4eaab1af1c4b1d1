"""The one package that talks to S3. Everything else in s3pipes calls :class:`S3Client`.

- :mod:`.url`: ``S3Url``, ``parse_url``, ``ObjectInfo``
- :mod:`.env`: settings from config and environment; per-process clients, engines and pools
- :mod:`.errors`: one table from S3 error code to the exception users catch
- :mod:`.retry`: the backoff and the resume of a broken body
- :mod:`.usage`: the requests this process has sent, counted as they are sent
- :mod:`.engine`: the GET engine protocol, the read strategy, the byte budget, ``read_many``
- :mod:`.engine_boto3`, :mod:`.engine_obstore`: the two GET engines
- :mod:`.client`: ``S3Client``; :mod:`.files`: ``S3RawFile`` and ``S3Writer``
"""

from .client import S3Client
from .env import _clients, reset_clients
from .files import S3RawFile, S3Writer
from .url import ObjectInfo, S3Url, parse_url

__all__ = ["ObjectInfo", "S3Client", "S3RawFile", "S3Url", "S3Writer", "_clients", "parse_url", "reset_clients"]
