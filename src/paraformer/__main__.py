"""``python -m paraformer ...``: the same command line as ``paraformer ...`` (torchrun launches modules)."""

import sys

from paraformer.cli import main

sys.exit(main())
