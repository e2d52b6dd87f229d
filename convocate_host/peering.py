"""The two SSH links between a shell host and an agent host: keys minted, host keys pinned both ways.

- shell → agent (tcp/222): the shell logs in with ``shell_to_agent_ed25519_key``, kept in its
  registry entry ``/etc/convocate/agents/<agent-id>/`` beside the agent's pinned host key
  (``known_host``), address and port; its public half is in the agent's ``authorized_keys``.
- agent → shell (tcp/223): the agent's status emitter logs in with
  ``agent_to_shell_ed25519_key``; its public half is in the shell's ``status_authorized_keys``
  (comment ``convocate-agent <agent-id>``, for people: it binds nothing) and in the agent's
  registry entry as ``status_ed25519_key.pub``, which is what binds the key to that one agent ID
  for status-serve (issue 14); the shell's status host key is pinned in the agent's
  ``shell_known_host``.

Keys are minted once (ed25519, DESIGN §2) and kept on later runs; a line is written only when it
differs. Both daemons re-read their authorized keys when the file changes, so a new agent is
accepted without a restart (the agent itself is restarted by the caller when its own side changed).
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncssh

from convocate.common import keys, messages
from convocate.common.errors import ConfigError
from convocate.common.paths import CLAUDE_USER, Paths
from convocate_host.report import LiveReport
from convocate_host.target import HostError, Target

PATHS = Paths()
CLAUDE_OWNER = f"{CLAUDE_USER}:{CLAUDE_USER}"


@dataclass(frozen=True)
class AgentIdentity:
    """What an installed agent host says about itself.

    Attributes:
        agent_id: Its 8-character ID.
        host_key_line: Its public SSH host key (``ssh-ed25519 AAAA...``).
    """

    agent_id: str
    host_key_line: str


async def read_agent_identity(agent: Target) -> AgentIdentity:
    """The agent ID and host key of an installed agent host.

    Raises:
        HostError: convocate-agent is not installed there (no agent ID or host key).
    """
    agent_id = (await agent.read_file(str(PATHS.agent_id_file)) or b"").decode().strip()
    public = await agent.read_file(str(PATHS.agent_host_key) + ".pub")
    if not agent_id or public is None:
        raise HostError(f"{agent.description}: {PATHS.agent_id_file} or the host key is missing: "
                        "is convocate-agent installed there?")
    return AgentIdentity(agent_id, _key_line(public, f"{agent.description} host key"))


async def read_status_host_key(shell: Target) -> str:
    """The shell host's public status host key.

    Raises:
        HostError: it is missing (``convocate-host init-shell`` makes it).
    """
    public = await shell.read_file(str(PATHS.status_host_key) + ".pub")
    if public is None:
        raise HostError(f"{shell.description}: {PATHS.status_host_key}.pub is missing: "
                        "run `convocate-host init-shell` on it first")
    return _key_line(public, f"{shell.description} status host key")


def _key_line(data: bytes, source: str) -> str:
    key = keys.parse_public_key(data.decode(errors="replace"), source=source)
    return keys.public_key_line(key)


async def ensure_keypair(target: Target, path: str, comment: str, report: LiveReport, *,
                         owner: str = CLAUDE_OWNER) -> str:
    """An ed25519 key pair at ``path`` (0600) and ``path.pub`` on ``target``; minted when missing.

    An existing private key is never replaced (the peer trusts its public half); ``path.pub`` is
    derived from it again, so a lost or stale public file is repaired, not a reason to re-key.

    Returns:
        The public key line (with ``comment``).

    Raises:
        ConfigError: ``path`` holds something that is not an ed25519 private key (left as it is).
    """
    private = await target.read_file(path)
    if private is not None:
        try:
            existing = asyncssh.import_private_key(private)
        except (asyncssh.KeyImportError, ValueError) as e:
            raise ConfigError(messages.KEY_UNREADABLE.format(path=f"{target.description}:{path}", detail=e)) from e
        line = keys.public_key_line(existing, comment)
        keys.parse_public_key(line, source=f"{target.description}:{path}")  # ed25519 only
        changed = await target.write_file(path + ".pub", (line + "\n").encode(), mode=0o644, owner=owner)
        # The private key's mode and owner are set again (it must stay unreadable to others).
        state = await target.file_state(path)
        if state is not None and (state.mode, state.owner) != (0o600, owner):
            user, _, group = owner.partition(":")
            await target.run(["chown", f"{user}:{group}", path])
            await target.run(["chmod", "600", path])
            changed = True
        report.step(changed, f"key {path} kept ({keys.fingerprint(existing)})")
        return line
    key = keys.generate_key(comment)
    await target.write_file(path, key.export_private_key("openssh"), mode=0o600, owner=owner)
    line = keys.public_key_line(key, comment)
    await target.write_file(path + ".pub", (line + "\n").encode(), mode=0o644, owner=owner)
    report.changed(f"key {path} minted ({keys.fingerprint(key)})")
    return line


async def ensure_authorized(target: Target, path: str, line: str, report: LiveReport, what: str, *,
                            owner: str) -> bool:
    """``line`` in the authorized keys file ``path`` on ``target`` (see :func:`keys.upsert_authorized_key`)."""
    current = (await target.read_file(path) or b"").decode(errors="replace")
    wanted = keys.upsert_authorized_key(current, line)
    changed = await target.write_file(path, wanted.encode(), mode=0o644, owner=owner)
    return report.step(changed, f"{what} in {path}")


async def pin_shell_side(shell: Target, agent: AgentIdentity, *, address: str, port: int,
                         report: LiveReport) -> str:
    """The shell's registry entry for the agent: address, port, pinned host key, login key.

    Returns:
        The public half of the shell's login key, for the agent's ``authorized_keys``.
    """
    directory = str(PATHS.agent_dir(agent.agent_id))
    await shell.ensure_dir(str(PATHS.agents_dir), mode=0o755, owner=CLAUDE_OWNER)
    changed = await shell.ensure_dir(directory, mode=0o750, owner=CLAUDE_OWNER)
    changed |= await shell.write_file(str(PATHS.agent_address_file(agent.agent_id)), f"{address}\n".encode(),
                                      owner=CLAUDE_OWNER)
    changed |= await shell.write_file(str(PATHS.agent_port_file(agent.agent_id)), f"{port}\n".encode(),
                                      owner=CLAUDE_OWNER)
    changed |= await shell.write_file(str(PATHS.agent_known_host(agent.agent_id)),
                                      f"{agent.host_key_line}\n".encode(), owner=CLAUDE_OWNER)
    report.step(changed, f"agent {agent.agent_id} registered at {address}:{port}, host key pinned ({directory})")
    return await ensure_keypair(shell, str(PATHS.shell_to_agent_key(agent.agent_id)),
                                f"convocate-shell {shell.address}", report)


async def read_status_key(agent: Target) -> str | None:
    """The public half of the agent's status key, derived from its private key (not the agent's ``.pub`` file).

    Returns:
        ``ssh-ed25519 AAAA...`` without a comment, or None when the agent has no status key yet.

    Raises:
        ConfigError: the file holds something that is not an ed25519 private key.
    """
    path = str(PATHS.agent_to_shell_key)
    private = await agent.read_file(path)
    if private is None:
        return None
    try:
        key = asyncssh.import_private_key(private)
    except (asyncssh.KeyImportError, ValueError) as e:
        raise ConfigError(messages.KEY_UNREADABLE.format(path=f"{agent.description}:{path}", detail=e)) from e
    line = keys.public_key_line(key)
    keys.parse_public_key(line, source=f"{agent.description}:{path}")  # ed25519 only
    return line


async def bind_status_key(shell: Target, agent_id: str, status_key_line: str, report: LiveReport) -> bool:
    """Record the agent's status key in its registry entry on the shell: the one agent ID the key speaks for.

    Written before the key is authorized, so status-serve never sees the key without its binding.

    Returns:
        True when the file changed.

    Raises:
        ConfigError: ``status_key_line`` is not an ed25519 public key line.
    """
    key = keys.parse_public_key(status_key_line, source=f"agent {agent_id} status key")
    path = str(PATHS.agent_status_key(agent_id))
    changed = await shell.write_file(path, f"{keys.public_key_line(key)}\n".encode(), mode=0o644, owner=CLAUDE_OWNER)
    return report.step(changed, f"agent {agent_id}'s status key ({keys.fingerprint(key)}) bound to it in {path}")


async def pin_agent_side(agent: Target, identity: AgentIdentity, *, shell_login_key: str, status_host_key: str,
                         report: LiveReport) -> tuple[str, bool]:
    """The agent's half: the shell's login key authorized, the shell's status host key pinned, a status key.

    Returns:
        ``(public status key line for status_authorized_keys, whether the agent's status settings changed)``.
    """
    await ensure_authorized(agent, str(PATHS.agent_authorized_keys), shell_login_key, report,
                            "the shell host's login key", owner="root:root")
    pinned = await agent.write_file(str(PATHS.shell_known_host), f"{status_host_key}\n".encode(), owner="root:root")
    report.step(pinned, f"shell status host key pinned in {PATHS.shell_known_host}")
    before = await agent.exists(str(PATHS.agent_to_shell_key))
    line = await ensure_keypair(agent, str(PATHS.agent_to_shell_key), f"convocate-agent {identity.agent_id}", report)
    return line, pinned or not before
