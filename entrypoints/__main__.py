"""``python -m jobworker`` is the ``jobworker`` command."""

import sys

from jobworker.entrypoints.cli import main

sys.exit(main())
