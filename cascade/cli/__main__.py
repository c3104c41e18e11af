"""``python -m cascade.cli``: the same command line as ``cascade``."""

import sys

from cascade.cli import main

sys.exit(main())
