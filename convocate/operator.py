"""The operator's claim of identity, shell side: found, signed and sent once per agent connection (issue 19).

Right after :meth:`convocate.client.AgentClient.connect` opens a connection, :func:`claim` looks for
the operator's certificate, without asking anything:

1. ``CONVOCATE_OPERATOR_KEY`` names a private key file, with its certificate beside it
   (``<key>-cert.pub``, OpenSSH's name); a key or certificate that cannot be used is a warning.
2. Otherwise the SSH agent at ``SSH_AUTH_SOCK`` (the operator's own, forwarded with ``ssh -A``):
   the first identity that is a user certificate signed by the cluster's operator CA
   (``/etc/convocate/operator-ca.pub``) and valid now, the one valid longest first.

It asks the agent for a challenge, has the key sign :func:`convocate.common.operator_claim.claim_data`
(through the SSH agent: the private key never leaves it) and sends ``operator_identify``. The result
is an :class:`OperatorClaim`: who the agent now takes the connection for, or why nobody. Finding no
certificate is not a failure (the connection stays unidentified, quietly); a claim the agent refuses
is one warning, never a failed command.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
from asyncssh.public_key import SSHOpenSSHCertificate, decode_ssh_certificate

from convocate.common import keys, messages, operator_claim
from convocate.common.errors import BadRequest, ConvocateError
from convocate.common.ops.base import run_op
from convocate.common.ops.params import OperatorChallengeParams, OperatorIdentifyParams, OperatorWhoamiParams
from convocate.common.paths import Paths

#: Environment variable naming an operator key file (its certificate is ``<file>-cert.pub``).
KEY_ENV = "CONVOCATE_OPERATOR_KEY"
#: Seconds the whole claim may take (the SSH agent answering, two round trips).
CLAIM_TIMEOUT_S = 10.0

Call = Callable[[str, dict[str, Any]], Awaitable[Any]]
Signer = Callable[[bytes], Awaitable[bytes]]


@dataclass(frozen=True)
class OperatorClaim:
    """What one connection's claim came to.

    Attributes:
        name: The operator the agent identified, or None.
        fingerprint: ``SHA256:...`` of the operator's key, when identified.
        reason: Why unidentified (None when identified).
        failed: True when a claim was made and refused (or broke): worth a warning; False when there
            was nothing to claim with.
    """

    name: str | None = None
    fingerprint: str | None = None
    reason: str | None = None
    failed: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {"name": self.name, "fingerprint": self.fingerprint, "reason": self.reason, "failed": self.failed}


@dataclass(frozen=True)
class ClaimSource:
    """A certificate and a way to sign with its key."""

    certificate: SSHOpenSSHCertificate
    sign: Signer
    origin: str


class NoSource(Exception):
    """No certificate to claim with; ``failed`` when one was configured but is unusable."""

    def __init__(self, reason: str, failed: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.failed = failed


def _read_ca(paths: Paths) -> asyncssh.SSHKey:
    path = paths.operator_ca_pub
    try:
        return keys.parse_public_key(path.read_text(), source=str(path))
    except FileNotFoundError:
        raise NoSource(messages.OPERATOR_NO_SHELL_CA.format(path=path)) from None
    except (OSError, ConvocateError) as e:
        raise NoSource(f"{messages.OPERATOR_NO_SHELL_CA.format(path=path)}: {e}", failed=True) from e


def _usable(cert: SSHOpenSSHCertificate, ca: asyncssh.SSHKey, now: float) -> bool:
    return (cert.signing_key.public_data == ca.public_data and cert._cert_type == asyncssh.public_key.CERT_TYPE_USER
            and cert._valid_after <= now < cert._valid_before)


def _from_key_file(path: Path, ca: asyncssh.SSHKey) -> ClaimSource:
    cert_path = Path(f"{path}-cert.pub")
    try:
        key = asyncssh.read_private_key(path)
        cert = asyncssh.read_certificate(cert_path)
    except (OSError, asyncssh.KeyImportError, ValueError) as e:
        raise NoSource(messages.OPERATOR_KEY_FILE_FAILED.format(path=path, detail=e), failed=True) from e
    if not isinstance(cert, SSHOpenSSHCertificate) or not _usable(cert, ca, time.time()):
        raise NoSource(messages.OPERATOR_KEY_FILE_NOT_CA.format(path=path, cert=cert_path), failed=True)

    async def sign(data: bytes) -> bytes:
        return key.sign(data, key.sig_algorithms[0])

    return ClaimSource(cert, sign, str(path))


async def _from_ssh_agent(socket: str, ca: asyncssh.SSHKey) -> tuple[ClaimSource, asyncssh.SSHAgentClient]:
    try:
        agent = await asyncssh.connect_agent(socket)
    except (OSError, asyncssh.Error) as e:
        raise NoSource(messages.OPERATOR_AGENT_SOCKET_FAILED.format(path=socket, detail=e), failed=True) from e
    if agent is None:
        raise NoSource(messages.OPERATOR_AGENT_SOCKET_FAILED.format(path=socket, detail="no agent"), failed=True)
    try:
        pairs = await agent.get_keys()
    except (OSError, asyncssh.Error, ValueError) as e:
        agent.close()
        raise NoSource(messages.OPERATOR_AGENT_SOCKET_FAILED.format(path=socket, detail=e), failed=True) from e
    now = time.time()
    found: list[tuple[SSHOpenSSHCertificate, Any]] = []
    for pair in pairs:
        if not pair.algorithm.endswith(b"-cert-v01@openssh.com"):
            continue
        try:
            cert = decode_ssh_certificate(pair.public_data)
        except (asyncssh.KeyImportError, ValueError):
            continue
        if isinstance(cert, SSHOpenSSHCertificate) and _usable(cert, ca, now):
            found.append((cert, pair))
    if not found:
        agent.close()
        raise NoSource(messages.OPERATOR_NO_CERTIFICATE)
    cert, pair = max(found, key=lambda f: f[0]._valid_before)
    return ClaimSource(cert, pair.sign_async, f"SSH_AUTH_SOCK={socket}"), agent


async def claim(call: Call, agent_id: str, paths: Paths, environ: Mapping[str, str] | None = None,
                timeout: float = CLAIM_TIMEOUT_S) -> OperatorClaim:
    """Identify this connection to agent ``agent_id`` as the operator whose certificate is found.

    Args:
        call: Runs one op on *this* connection and returns its result (raises the agent's error).
        agent_id: The agent's ID (signed, so the signature is good for that agent only).
        paths: The shell host's layout (the operator CA's public key).
        environ: ``SSH_AUTH_SOCK`` and ``CONVOCATE_OPERATOR_KEY`` (the process environment by default).
        timeout: Seconds for the whole claim.

    Returns:
        The outcome; never raises for a refused or broken claim.
    """
    env = os.environ if environ is None else environ
    agent: asyncssh.SSHAgentClient | None = None
    try:
        ca = _read_ca(paths)
        key_file = env.get(KEY_ENV, "")
        socket = env.get("SSH_AUTH_SOCK", "")
        if key_file:
            source = _from_key_file(Path(key_file), ca)
        elif socket:
            source, agent = await asyncio.wait_for(_from_ssh_agent(socket, ca), timeout)
        else:
            raise NoSource(messages.OPERATOR_NO_AGENT_SOCKET)
        return await asyncio.wait_for(_identify(call, agent_id, source), timeout)
    except NoSource as e:
        return OperatorClaim(reason=e.reason, failed=e.failed)
    except BadRequest as e:
        if e.message.startswith("unknown op"):
            return OperatorClaim(reason=messages.OPERATOR_AGENT_TOO_OLD)
        return OperatorClaim(reason=str(e), failed=True)
    except ConvocateError as e:
        return OperatorClaim(reason=str(e), failed=True)
    except TimeoutError:
        return OperatorClaim(reason=f"no answer within {timeout:g} s", failed=True)
    except Exception as e:  # a claim never fails the command (an odd answer, an odd SSH agent)
        return OperatorClaim(reason=f"{type(e).__name__}: {e}", failed=True)
    finally:
        if agent is not None:
            agent.close()


async def _identify(call: Call, agent_id: str, source: ClaimSource) -> OperatorClaim:
    challenge = await run_op(call, OperatorChallengeParams(), agent_id)
    nonce = base64.b64decode(challenge.nonce, validate=True)
    signature = await source.sign(operator_claim.claim_data(agent_id, nonce))
    certificate = source.certificate.export_certificate("openssh").decode("ascii").strip()
    proof = OperatorIdentifyParams(certificate=certificate, signature=base64.b64encode(signature).decode("ascii"))
    result = await run_op(call, proof, agent_id)
    return OperatorClaim(name=result.name, fingerprint=result.fingerprint)


async def whoami(client: Any) -> dict[str, Any]:
    """Who agent ``client`` (an :class:`convocate.client.AgentClient`) takes this operator for, or why nobody.

    Returns:
        ``{"agent_id", "name", "fingerprint", "reason", "error"}``: ``name`` and ``fingerprint`` as the agent
        has them for this connection (``operator_whoami``); ``reason`` why unidentified; ``error`` when the agent
        could not be asked at all.
    """
    row: dict[str, Any] = {"agent_id": client.agent_id, "name": None, "fingerprint": None, "reason": None,
                           "error": None}
    try:
        await client.connect()
        claimed: OperatorClaim | None = client.operator
        try:
            seen = (await client.request(OperatorWhoamiParams())).operator
        except BadRequest as e:
            if not e.message.startswith("unknown op"):
                raise
            seen = None
        if seen:
            row.update(name=seen.get("name"), fingerprint=seen.get("fingerprint"))
        else:
            row["reason"] = claimed.reason if claimed is not None and claimed.reason else messages.OPERATOR_AGENT_TOO_OLD
    except ConvocateError as e:
        row["error"] = str(e)
    return row
