"""Opening the target a ``convocate-host`` command names: its SSH options (``--user --port --identity
--known-hosts``) and :func:`open_target` (this machine, an SSH login, either wrapped for ``--dry-run``).
"""

from __future__ import annotations

import argparse
import getpass
from pathlib import Path

from convocate_host.dryrun import DryRunTarget
from convocate_host.sshtarget import SSHTarget
from convocate_host.target import (
    LocalTarget,
    Target,
)

#: The ``--host`` value that means this machine (for commands whose host option is required).
LOCAL = "local"


def add_ssh_options(parser: argparse.ArgumentParser) -> None:
    """The SSH options every ``convocate-host`` command takes (``--user --port --identity --known-hosts``)."""
    group = parser.add_argument_group("SSH")
    group.add_argument("--user", default=getpass.getuser(),
                       help="login user on remote hosts: root or one with NOPASSWD sudo [%(default)s]")
    group.add_argument("--port", type=int, default=22, help="SSH port of remote hosts [%(default)s]")
    group.add_argument("--identity", type=Path, help="private key to log in with [your SSH keys and agent]")
    group.add_argument("--known-hosts", type=Path, help="known_hosts file [~/.ssh/known_hosts]")


async def open_target(args: argparse.Namespace, host: str | None, *, local_address: str | None = None) -> Target:
    """This machine for no host (or ``local``), else an SSH login to ``host`` with the options of :func:`add_ssh_options`.

    With ``args.dry_run`` the target is wrapped in a :class:`DryRunTarget`.

    Raises:
        SudoRequired: sudo needs a password (here or there).
        HostKeyMismatch: the host key is not the known one.
        Unreachable: the host cannot be reached or refused the login.
    """
    target: Target
    if not host or host == LOCAL:
        local = LocalTarget(local_address)
        await local.check_sudo()
        target = local
    else:
        target = await SSHTarget.connect(host, user=args.user, port=args.port, identity=args.identity,
                                         known_hosts=args.known_hosts)
    return DryRunTarget(target) if getattr(args, "dry_run", False) else target
