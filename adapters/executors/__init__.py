"""The built-in executors: HTTP, IMAGE_RESIZE and SLEEP.

Names are loaded on first use, so importing this package does not import requests
or Pillow (a worker that only runs SLEEP jobs never pays for them).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adapters.executors.http import HttpExecutor
    from adapters.executors.image_resize import ImageResizeExecutor
    from adapters.executors.safe_http import SafeHttpClient
    from adapters.executors.sleep import SleepExecutor

__all__ = ["HttpExecutor", "ImageResizeExecutor", "SafeHttpClient", "SleepExecutor"]

_MODULE_OF = {
    "HttpExecutor": "adapters.executors.http",
    "ImageResizeExecutor": "adapters.executors.image_resize",
    "SafeHttpClient": "adapters.executors.safe_http",
    "SleepExecutor": "adapters.executors.sleep",
}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
