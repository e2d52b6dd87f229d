"""The numbers and names every role shares, declared once (DESIGN §3, §4, §5).

Ports, the session account, Docker names and labels, and relay chunk sizes. A value here is a
contract between two places (an agent and the shell, an agent and its containers, a package and the
code it installs): change it here and everywhere follows. Paths live in :mod:`convocate.common.paths`;
messages in :mod:`convocate.common.messages`.

The module imports nothing, so every command may import it without cost at start-up.
"""

from __future__ import annotations

# --- ports (DESIGN §3) --------------------------------------------------------------------------
#: The agent's SSH listener (``convocate-agent serve``), to which the shell connects.
AGENT_PORT = 222
#: The shell host's status listener (``convocate status-serve``), to which every agent connects.
STATUS_PORT = 223

# --- the session account (DESIGN §4) --------------------------------------------------------------
#: The account that owns sessions on every host, and that session containers run as. The IDs are
#: fixed because a home moves between hosts with its owner: 1337 on every one.
CLAUDE_USER = "claude"
CLAUDE_UID = 1337
CLAUDE_GID = 1337
#: Login shell of the ``claude`` account where nobody logs in as it (agent hosts).
NOLOGIN = "/usr/sbin/nologin"

# --- Docker names and labels (DESIGN §5) ----------------------------------------------------------
#: A session's container is ``convocate-session-<uuid>``.
CONTAINER_PREFIX = "convocate-session-"
#: Labels on every session container (Docker object labels, reverse-DNS style).
LABEL_SESSION = "convocate.session"
LABEL_AGENT = "convocate.agent"
LABEL_ROOT = "convocate.root"
LABEL_CPUS = "convocate.cpus"
LABEL_MEMORY = "convocate.memory_mb"
#: The Claude Code version a container was started with, on the container and on the image.
LABEL_CLAUDE_CODE = "convocate.claude-code"

# --- relays -------------------------------------------------------------------------------------
#: Largest read of one terminal relay step, on the operator's side and on the agent's (bytes).
RELAY_CHUNK = 64 * 1024
