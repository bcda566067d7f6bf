"""Three libraries the worker uses, imported without optional extras it never uses.

Each of them imports an extra whenever it is installed, and each extra costs every
worker process memory for nothing (about 5 MB in all, measured at pool 1,000; issue 21):

- structlog imports rich (installed with the dev tools) for pretty tracebacks in its
  console renderer. Without it, ``LOG_FORMAT=text`` prints plain tracebacks, as an
  installed worker (no dev tools) does anyway.
- dynaconf builds a jinja2 environment for its ``@jinja`` values. The settings read
  every value as text, never as one of dynaconf's directives (``auto_cast`` off, see
  settings/reading.py).
- dependency-injector imports PyYAML for ``Configuration.from_yaml``, which the
  container does not use.

An extra is hidden only while those three are imported: ``jobworker web`` (jinja2), or
anything else that imports one later, gets it as usual.
"""

from __future__ import annotations

import importlib
import sys

UNUSED_EXTRAS = ("rich", "jinja2", "yaml")
_IMPORTED_WITHOUT_THEM = (
    "structlog",
    "dynaconf",
    "dependency_injector.providers",
    "dependency_injector.containers",
)


def import_without_unused_extras() -> None:
    """Import structlog, dynaconf and dependency-injector with ``UNUSED_EXTRAS`` hidden.

    Call it once, first thing in the process (after gevent's patch): a library already
    imported keeps whatever it picked up.
    """
    hidden = [name for name in UNUSED_EXTRAS if name not in sys.modules]
    for name in hidden:
        # None in sys.modules makes ``import name`` raise ImportError, as if not installed.
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        for library in _IMPORTED_WITHOUT_THEM:
            importlib.import_module(library)
    finally:
        for name in hidden:
            if sys.modules.get(name, sys) is None:
                del sys.modules[name]
