"""convocate: run many Claude Code sessions across a cluster of agent hosts.

This package is the shell-host role (the operator's CLI and TUI, and the status
listener). Its ``convocate.common`` subpackage is shared by every role and is
vendored into each role's zipapp, so nothing here may import a UI library at
module level.
"""

from convocate.common.version import __version__

__all__ = ["__version__"]
