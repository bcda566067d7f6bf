"""``python -m entrypoints`` is the ``jobworker`` command."""

import sys

from entrypoints.cli import main

sys.exit(main())
