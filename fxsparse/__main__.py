"""``python -m fxsparse ...`` (and ``torchrun ... -m fxsparse train ...``) is the ``fxsparse`` command."""
import sys

from fxsparse.cli import main

sys.exit(main())
