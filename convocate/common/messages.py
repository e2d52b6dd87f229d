"""User-facing message texts, in one place so tests import them instead of repeating them.

Each constant is a ``str.format`` template; the placeholders are named. The texts live in one module
per area and are re-exported here, so callers write ``messages.X`` whatever the area:

- :mod:`convocate.common.messages_rpc`: the agent's RPC (its error texts are part of the wire
  protocol, DESIGN §3, kept compatible with the original convocate agents), parameters, credentials,
  lifecycle, attach, pre-authentication limits, keys, the shell side, the TUI forms;
- :mod:`convocate.common.messages_install`: the install steps (DESIGN §7);
- :mod:`convocate.common.messages_host`: ``convocate-host`` (targets, log forwarding, create-vm, command
  lines, ``--dry-run``, the Claude Code pin);
- :mod:`convocate.common.messages_sessions`: report sockets, usage limits, recordings, moving sessions,
  mixed clusters;
- :mod:`convocate.common.messages_operator`: operator identity and the audit trail.
"""

from convocate.common import (
    messages_host,
    messages_install,
    messages_operator,
    messages_rpc,
    messages_sessions,
)
from convocate.common.messages_host import *  # noqa: F403
from convocate.common.messages_install import *  # noqa: F403
from convocate.common.messages_operator import *  # noqa: F403
from convocate.common.messages_rpc import *  # noqa: F403
from convocate.common.messages_sessions import *  # noqa: F403

#: Every message constant, by area module.
__all__ = [name for area in (messages_rpc, messages_install, messages_host, messages_sessions, messages_operator)
           for name in vars(area) if name.isupper()]
