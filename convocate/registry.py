"""The shell host's registry of agents: ``/etc/convocate/agents/<agent-id>/``.

Each registered agent is a directory holding its ``address``, ``port``
(222 when absent), the private key this shell authenticates with
(``shell_to_agent_ed25519_key``) and the agent's pinned host key
(``known_host``). ``convocate-host init-agent`` writes them; the demo writes
one for its local agent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from convocate.common import keys
from convocate.common.errors import ConfigError
from convocate.common.fsutil import atomic_write, read_token
from convocate.common.paths import Paths

DEFAULT_AGENT_PORT = 222


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
    port_text = read_token(paths.agent_port_file(agent_id)) or str(DEFAULT_AGENT_PORT)
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
                   client_key: keys.asyncssh.SSHKey) -> AgentRecord:
    """Write (or rewrite) a registry entry atomically, file by file.

    Args:
        paths: Installation layout.
        agent_id: The agent's ID.
        address: Host name or IP address.
        port: SSH port.
        host_key_line: The agent's public host key (``ssh-ed25519 AAAA...``) to pin.
        client_key: This shell's private key for the agent (mode 0600).
    """
    directory = paths.agent_dir(agent_id)
    directory.mkdir(parents=True, exist_ok=True, mode=0o755)
    keys.parse_public_key(host_key_line, source=f"agent {agent_id} host key")
    atomic_write(paths.agent_address_file(agent_id), f"{address}\n".encode())
    atomic_write(paths.agent_port_file(agent_id), f"{port}\n".encode())
    atomic_write(paths.agent_known_host(agent_id), f"{host_key_line.strip()}\n".encode())
    keys.write_private_key(paths.shell_to_agent_key(agent_id), client_key)
    return load_agent(paths, agent_id)
