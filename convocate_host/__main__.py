"""``python -m convocate_host``: the same as the ``convocate-host`` command."""

import sys

from convocate_host.cli import main

sys.exit(main())
