"""The cluster's operator CA (issue 19 item 3): made by init-shell, installed by init-agent, used by operator-cert.

- init-shell: ``/etc/convocate/operator-ca`` (an ed25519 key, root 0600) and ``operator-ca.pub`` (0644,
  read by every operator's ``convocate``), minted once and never replaced (every certificate hangs on it).
- init-agent: the public half copied to the agent as ``/etc/convocate-agent/operator-ca.pub`` (root, 0644);
  the agent reads it at each ``operator_identify``, so it needs no restart.
- ``convocate-host operator-cert --name NAME PUBKEY_FILE``: an OpenSSH user certificate of the operator's
  own public key, key ID and only principal ``NAME``, written as ``<key>-cert.pub`` beside the key (the
  name ``ssh-add`` loads together with the key). Only root can issue one: the CA key is root's.
"""

from __future__ import annotations

import time
from pathlib import Path

import asyncssh

from convocate.common import keys, messages
from convocate.common.errors import BadRequest, ConfigError, NoPermission
from convocate.common.fsutil import atomic_write
from convocate.common.operator_claim import validate_operator_name
from convocate.common.paths import Paths
from convocate_host.peering import ensure_keypair
from convocate_host.report import LiveReport
from convocate_host.target import Target

PATHS = Paths()
ROOT_OWNER = "root:root"
#: Default validity of an operator certificate, in days.
DEFAULT_VALID_DAYS = 90
#: Longest validity operator-cert issues, in days (a certificate cannot be revoked: keep it short-lived).
MAX_VALID_DAYS = 3650
#: Seconds a new certificate is valid before its issue time (the agents' clocks may lag the shell's a little).
BACKDATE_S = 300


async def ensure_shell_ca(shell: Target, report: LiveReport) -> str:
    """The operator CA key pair on the shell host (minted when missing); returns its public line."""
    return await ensure_keypair(shell, str(PATHS.operator_ca_key), "convocate operator CA", report, owner=ROOT_OWNER)


async def install_agent_ca(shell: Target, agent: Target, report: LiveReport) -> bool:
    """The shell's operator CA public key as the agent's ``operator-ca.pub``; True when it changed.

    A shell host set up before issue 19 has none: noted, and the agent stays unable to identify operators
    until init-shell runs there again.
    """
    public = await shell.read_file(str(PATHS.operator_ca_pub))
    if public is None:
        report.note(f"{shell.description}: {PATHS.operator_ca_pub} is missing (run `convocate-host init-shell` "
                    "there): operators cannot identify to this agent")
        return False
    line = keys.public_key_line(keys.parse_public_key(public.decode(errors="replace"),
                                                      source=f"{shell.description}:{PATHS.operator_ca_pub}"),
                                "convocate operator CA")
    changed = await agent.write_file(str(PATHS.agent_operator_ca), (line + "\n").encode(), mode=0o644,
                                     owner=ROOT_OWNER)
    return report.step(changed, f"operator CA {keys.fingerprint(keys.parse_public_key(line))} in "
                                f"{PATHS.agent_operator_ca}")


def default_output(pubkey_file: Path) -> Path:
    """``id_ed25519.pub`` -> ``id_ed25519-cert.pub`` (OpenSSH's name), anything else gets ``-cert.pub`` appended."""
    name = pubkey_file.name
    return pubkey_file.with_name((name[:-4] if name.endswith(".pub") else name) + "-cert.pub")


def issue_certificate(paths: Paths, name: str, pubkey_file: Path, valid_days: int = DEFAULT_VALID_DAYS,
                      out: Path | None = None, now: float | None = None) -> tuple[Path, asyncssh.SSHCertificate]:
    """Sign ``pubkey_file`` into an operator certificate for ``name``.

    Args:
        paths: The shell host's layout (the CA key is :attr:`Paths.operator_ca_key`).
        name: The operator's name (:data:`convocate.common.operator_claim.OPERATOR_NAME`).
        pubkey_file: The operator's own public key (any type OpenSSH and asyncssh support).
        valid_days: Days the certificate is valid (1 to :data:`MAX_VALID_DAYS`).
        out: Where to write it; :func:`default_output` by default.
        now: Seconds since the epoch (tests).

    Returns:
        The file written and the certificate.

    Raises:
        BadRequest: a bad name, validity or public key file.
        ConfigError: no CA on this host.
        NoPermission: the CA is root's and this is not root.
    """
    validate_operator_name(name, "--name")
    if not 1 <= valid_days <= MAX_VALID_DAYS:
        raise BadRequest(messages.BAD_RANGE.format(field="--valid-days", value=valid_days, low=1, high=MAX_VALID_DAYS,
                                                   unit=" days"))
    ca_path = paths.operator_ca_key
    try:
        ca = asyncssh.read_private_key(ca_path)
    except FileNotFoundError:
        raise ConfigError(messages.OPERATOR_CA_MISSING.format(path=ca_path)) from None
    except PermissionError:
        raise NoPermission(messages.OPERATOR_CA_NOT_ROOT.format(path=ca_path)) from None
    except (OSError, asyncssh.KeyImportError) as e:
        raise ConfigError(messages.KEY_UNREADABLE.format(path=ca_path, detail=e)) from e
    try:
        user_key = asyncssh.read_public_key(pubkey_file)
    except (OSError, asyncssh.KeyImportError, ValueError) as e:
        raise BadRequest(messages.OPERATOR_PUBKEY_UNREADABLE.format(path=pubkey_file, detail=e)) from e
    now = time.time() if now is None else now
    valid_after = int(now) - BACKDATE_S
    valid_before = int(now) + valid_days * 86400
    cert = ca.generate_user_certificate(user_key, name, principals=[name], valid_after=valid_after,
                                        valid_before=valid_before, comment=f"convocate operator {name}",
                                        # a name for the agents only: nothing for an OpenSSH server that trusted it
                                        permit_x11_forwarding=False, permit_agent_forwarding=False,
                                        permit_port_forwarding=False, permit_pty=False, permit_user_rc=False)
    target = out or default_output(pubkey_file)
    owner = pubkey_file.stat()  # the certificate belongs to whoever owns the key (root writes it)
    atomic_write(target, cert.export_certificate("openssh"), mode=0o644, uid=owner.st_uid, gid=owner.st_gid)
    return target, cert


def describe(name: str, path: Path, cert: asyncssh.SSHCertificate, valid_days: int, now: float | None = None) -> str:
    """The one line operator-cert prints."""
    until = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime((time.time() if now is None else now) + valid_days * 86400))
    return messages.OPERATOR_CERT_ISSUED.format(name=name, fingerprint=cert.key.get_fingerprint("sha256"),
                                                until=until, path=path)
