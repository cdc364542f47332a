"""``python -m optbench``: the ``optbench`` command line."""

import sys

from optbench.cli import main

sys.exit(main())
