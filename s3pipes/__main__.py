"""``python -m s3pipes``: the same as the ``s3pipes`` command."""

import sys

from .cli import main

sys.exit(main())
