"""convocate-agent: the agent-host daemon that runs session containers.

Imports only ``convocate.common`` from the shell package (DESIGN §1).
"""

from convocate.common.version import __version__

__all__ = ["__version__"]
