"""``python -m adapters.core --address HOST:PORT --db PATH``: the reference Core alone.

Tests and demos start Core with it as a subprocess; ``jobworker core`` runs the same
``serve_core``. Like every entrypoint of this project it patches gevent first.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402 - everything below runs patched
import sys  # noqa: E402

from adapters.core.process import READY_LINE_PREFIX  # noqa: E402
from adapters.core.server import serve_core  # noqa: E402
from domain.errors import JobWorkerError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m adapters.core", description=__doc__)
    parser.add_argument("--address", default="127.0.0.1:50051", help="host:port to listen on")
    parser.add_argument("--db", required=True, help="SQLite file for the results")
    parser.add_argument("--max-workers", type=int, default=16, help="concurrent handlers")
    parser.add_argument("--grace", type=float, default=5.0, help="seconds to drain on stop")
    args = parser.parse_args(argv)

    def announce(port: int) -> None:
        sys.stdout.write(f"{READY_LINE_PREFIX}{port}\n")
        sys.stdout.flush()

    try:
        serve_core(
            args.address,
            args.db,
            max_workers=args.max_workers,
            grace_s=args.grace,
            on_started=announce,
        )
    except (JobWorkerError, ValueError) as exc:
        sys.stderr.write(f"core: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
