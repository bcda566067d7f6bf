"""``python -m jobworker``: the same CLI as the ``jobworker`` command."""

import sys

from jobworker.entrypoints.cli import main

sys.exit(main())
