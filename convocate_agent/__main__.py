"""``python -m convocate_agent``: the same as the ``convocate-agent`` command."""

import sys

from convocate_agent.cli import main

sys.exit(main())
