"""``python -m convocate``: the same as the ``convocate`` command."""

import sys

from convocate.cli import main

sys.exit(main())
