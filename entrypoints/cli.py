"""The ``jobworker`` console script.

gevent must patch the standard library before grpc, kafka-python, requests or
dependency-injector are imported (kafka-python captures its selector at import; grpc
needs patched sockets for ``init_gevent``). So this module imports nothing else at the
top, and ``main`` patches first, then loads the commands (some libraries without
extras the worker never uses: lean_imports.py).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from gevent import monkey  # noqa: PLC0415 - the patch must come before every other import

    monkey.patch_all()

    from jobworker.entrypoints.lean_imports import import_without_unused_extras  # noqa: PLC0415

    import_without_unused_extras()  # before anything imports structlog or dynaconf

    from jobworker.entrypoints.commands import run_cli  # noqa: PLC0415

    return run_cli(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
