"""The built-in executors: HTTP, IMAGE_RESIZE and SLEEP.

Names are loaded on first use, so importing this package does not import requests
or Pillow (a worker that only runs SLEEP jobs never pays for them).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jobworker.adapters.executors.http import HttpExecutor
    from jobworker.adapters.executors.image_resize import ImageResizeExecutor
    from jobworker.adapters.executors.safe_http import SafeHttpClient
    from jobworker.adapters.executors.sleep import SleepExecutor

__all__ = ["HttpExecutor", "ImageResizeExecutor", "SafeHttpClient", "SleepExecutor"]

_MODULE_OF = {
    "HttpExecutor": "jobworker.adapters.executors.http",
    "ImageResizeExecutor": "jobworker.adapters.executors.image_resize",
    "SafeHttpClient": "jobworker.adapters.executors.safe_http",
    "SleepExecutor": "jobworker.adapters.executors.sleep",
}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
