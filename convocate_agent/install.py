"""``convocate-agent install``: idempotent bootstrap of an agent host.

Creates what the agent needs to exist and keeps what already exists: the
agent ID (generated once, never changed), the ed25519 host key, the session
base and skel directories. It reports every step as done or already done, and
how many existing session directories it adopted. It does not mint peering
keys, install TLS certificates or start the service: ``convocate-host
init-agent`` does those (DESIGN §4).
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import string
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from convocate.common import keys
from convocate.common.errors import ConfigError
from convocate.common.fsutil import atomic_write, read_token
from convocate.common.paths import Paths
from convocate_agent.store import SessionStore

AGENT_ID_LENGTH = 8
_AGENT_ID = re.compile(r"^[a-z0-9]{8}$")
_ALPHABET = string.ascii_lowercase + string.digits


def new_agent_id() -> str:
    """A fresh random agent ID: 8 characters of ``a-z0-9``."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(AGENT_ID_LENGTH))


def valid_agent_id(value: str) -> bool:
    """Whether ``value`` has the agent ID form (8 of ``a-z0-9``)."""
    return bool(_AGENT_ID.match(value))


@dataclass
class InstallReport:
    """What ``install`` did.

    Attributes:
        agent_id: The agent's ID (new or kept).
        adopted: Existing session directories found under the session base.
        steps: One human-readable line per step.
    """

    agent_id: str = ""
    adopted: int = 0
    steps: list[str] = field(default_factory=list)


def _chown(path: Path, uid: int, gid: int, report: InstallReport) -> None:
    try:
        os.chown(path, uid, gid)
    except PermissionError:
        report.steps.append(f"note: cannot give {path} to {uid}:{gid} (not root); sessions may not write their homes")
    except OSError as e:
        if e.errno != errno.EPERM:
            raise


def install(paths: Paths, *, uid: int, gid: int) -> InstallReport:
    """Bootstrap the agent host described by ``paths``.

    Args:
        paths: Installation layout (``CONVOCATE_ROOT`` relocates it).
        uid: Owner of the session base and skel (the ``claude`` user).
        gid: Group of the session base and skel.

    Returns:
        The report of what was done.

    Raises:
        ConfigError: an existing agent ID or host key is invalid; it is left
            as it is for the operator to look at.
    """
    report = InstallReport()
    paths.agent_etc.mkdir(parents=True, exist_ok=True, mode=0o755)

    current = read_token(paths.agent_id_file)
    if current:
        if not valid_agent_id(current):
            raise ConfigError(f"{paths.agent_id_file} holds {current!r}, not an 8-character agent ID; "
                              "fix or remove it")
        report.steps.append(f"agent ID {current} kept ({paths.agent_id_file})")
    else:
        current = new_agent_id()
        atomic_write(paths.agent_id_file, (current + "\n").encode(), mode=0o644)
        report.steps.append(f"agent ID {current} generated ({paths.agent_id_file})")
    report.agent_id = current

    key, created = keys.ensure_private_key(paths.agent_host_key, comment=f"convocate-agent {current}")
    report.steps.append(f"host key {keys.fingerprint(key)} {'generated' if created else 'kept'} ({paths.agent_host_key})")

    base_existed = paths.session_base.is_dir()
    paths.session_base.mkdir(parents=True, exist_ok=True, mode=0o755)
    if not base_existed:
        _chown(paths.session_base, uid, gid, report)
    report.steps.append(f"session base {paths.session_base} {'kept' if base_existed else 'created'}")

    skel_file = paths.skel_dir / "CLAUDE.md"
    if skel_file.exists():
        report.steps.append(f"skel {skel_file} kept")
    else:
        paths.skel_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        _chown(paths.skel_dir, uid, gid, report)
        text = resources.files("convocate_agent").joinpath("skel", "CLAUDE.md").read_bytes()
        atomic_write(skel_file, text, mode=0o644, uid=uid if os.geteuid() == 0 else None,
                     gid=gid if os.geteuid() == 0 else None)
        report.steps.append(f"skel {skel_file} written")

    sessions, broken = SessionStore(paths, uid, gid).load_all()
    report.adopted = len(sessions)
    report.steps.append(f"adopted {len(sessions)} existing session(s)"
                        + (f"; {len(broken)} unreadable: " + ", ".join(b.uuid for b in broken) if broken else ""))
    if paths.relocated:
        report.steps.append(f"relocated root {paths.root}: system users and units left untouched")
    else:
        report.steps.append("user claude, systemd unit, slice, cron and logrotate: not managed by this version yet")
    return report
