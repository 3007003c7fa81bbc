"""``python -m sitectl``: the same as the ``sitectl`` command."""

import sys

from sitectl.cli import main

sys.exit(main())
