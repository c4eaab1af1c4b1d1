"""Optional dependencies: imported where first needed, or an ImportError naming the extra that installs them."""

from __future__ import annotations

import importlib
from typing import Any


def need(module: str, purpose: str, extra: str) -> Any:
    """``module`` imported, or an ImportError saying ``purpose`` needs it and ``pip install 's3pipes[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{purpose} needs the {module.split('.')[0]} package, which is not installed: "
                          f"pip install 's3pipes[{extra}]'") from None
