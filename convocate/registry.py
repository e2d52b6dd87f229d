"""The shell host's registry of agents: ``/etc/convocate/agents/<agent-id>/``.

Each registered agent is a directory holding its ``address``, ``port``
(222 when absent), the private key this shell authenticates with
(``shell_to_agent_ed25519_key``), the agent's pinned host key
(``known_host``) and the public half of the agent's status key
(``status_ed25519_key.pub``). ``convocate-host init-agent`` writes them (and
``update`` records the status key of an agent registered before it existed);
the demo writes one for its local agent.

The status key file is what binds a status connection to an agent ID: a key
speaks for the one agent whose entry holds it, never for the agent its
``status_authorized_keys`` comment names (issue 14).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from convocate.common.constants import AGENT_PORT
from convocate.common.errors import ConfigError
from convocate.common.fsutil import atomic_write, read_token
from convocate.common.paths import Paths

if TYPE_CHECKING:
    import asyncssh

log = logging.getLogger(__name__)

#: An agent ID: 8 of a-z and 0-9 (DESIGN §4), the name of its registry entry.
AGENT_ID = re.compile(r"^[a-z0-9]{8}\Z")


@dataclass(frozen=True)
class AgentRecord:
    """One registered agent.

    Attributes:
        agent_id: The agent's 8-character ID (the directory name).
        address: Host name or IP address.
        port: SSH port of ``convocate-agent serve``.
        key_path: Private key the shell logs in with.
        known_host_path: File with the agent's pinned ed25519 host key.
    """

    agent_id: str
    address: str
    port: int
    key_path: Path
    known_host_path: Path

    @property
    def endpoint(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


def load_agent(paths: Paths, agent_id: str) -> AgentRecord:
    """Read one registry entry.

    Raises:
        ConfigError: the entry lacks an address or has a bad port.
    """
    address = read_token(paths.agent_address_file(agent_id))
    if not address:
        raise ConfigError(f"agent {agent_id}: {paths.agent_address_file(agent_id)} is missing or empty")
    port_text = read_token(paths.agent_port_file(agent_id)) or str(AGENT_PORT)
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ConfigError(f"agent {agent_id}: {paths.agent_port_file(agent_id)} holds {port_text!r}, not a port")
    return AgentRecord(agent_id, address, int(port_text), paths.shell_to_agent_key(agent_id),
                       paths.agent_known_host(agent_id))


def load_registry(paths: Paths) -> tuple[list[AgentRecord], list[ConfigError]]:
    """Every registered agent, sorted by ID; broken entries are returned as errors, not raised."""
    records: list[AgentRecord] = []
    errors: list[ConfigError] = []
    try:
        names = sorted(p.name for p in paths.agents_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    except FileNotFoundError:
        return records, errors
    for name in names:
        try:
            records.append(load_agent(paths, name))
        except ConfigError as e:
            errors.append(e)
    return records, errors


def register_agent(paths: Paths, agent_id: str, address: str, port: int, host_key_line: str,
                   client_key: asyncssh.SSHKey) -> AgentRecord:
    """Write (or rewrite) a registry entry atomically, file by file.

    Args:
        paths: Installation layout.
        agent_id: The agent's ID.
        address: Host name or IP address.
        port: SSH port.
        host_key_line: The agent's public host key (``ssh-ed25519 AAAA...``) to pin.
        client_key: This shell's private key for the agent (mode 0600).
    """
    from convocate.common import keys  # asyncssh: only where keys are read or written (issue 17)

    directory = paths.agent_dir(agent_id)
    directory.mkdir(parents=True, exist_ok=True, mode=0o755)
    keys.parse_public_key(host_key_line, source=f"agent {agent_id} host key")
    atomic_write(paths.agent_address_file(agent_id), f"{address}\n".encode())
    atomic_write(paths.agent_port_file(agent_id), f"{port}\n".encode())
    atomic_write(paths.agent_known_host(agent_id), f"{host_key_line.strip()}\n".encode())
    keys.write_private_key(paths.shell_to_agent_key(agent_id), client_key)
    return load_agent(paths, agent_id)


def bind_status_key(paths: Paths, agent_id: str, public_key_line: str) -> None:
    """Record ``public_key_line`` as the status key of ``agent_id`` (its registry entry's ``status_ed25519_key.pub``).

    Raises:
        ConfigError: the line is not an ed25519 public key.
    """
    from convocate.common import keys  # asyncssh: only where keys are read or written (issue 17)

    key = keys.parse_public_key(public_key_line, source=f"agent {agent_id} status key")
    paths.agent_dir(agent_id).mkdir(parents=True, exist_ok=True, mode=0o755)
    atomic_write(paths.agent_status_key(agent_id), f"{keys.public_key_line(key)}\n".encode(), mode=0o644)


def status_key_bindings(paths: Paths) -> dict[str, str]:
    """Fingerprint (``SHA256:...``) of every recorded status key → the agent ID whose entry holds it.

    An entry whose file is unreadable or not an ed25519 key binds nothing (logged). A key found
    in two entries binds neither: which agent it speaks for cannot be told.
    """
    from convocate.common import keys  # asyncssh: only where keys are read or written (issue 17)

    found: dict[str, list[str]] = {}
    try:
        entries = sorted(p for p in paths.agents_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    except FileNotFoundError:
        return {}
    for entry in entries:
        if not AGENT_ID.match(entry.name):
            continue
        path = paths.agent_status_key(entry.name)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError) as e:
            log.warning("registry: cannot read %s: %s", path, e)
            continue
        try:
            key = keys.parse_public_key(text, source=str(path))
        except ConfigError as e:
            log.warning("registry: %s", e)
            continue
        found.setdefault(keys.fingerprint(key), []).append(entry.name)
    bindings = {}
    for fingerprint, agents in found.items():
        if len(agents) == 1:
            bindings[fingerprint] = agents[0]
        else:
            log.warning("registry: status key %s is recorded for agents %s; it is bound to none of them",
                        fingerprint, ", ".join(agents))
    return bindings
