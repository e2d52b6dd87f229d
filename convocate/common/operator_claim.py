"""An operator's claim of identity to an agent, both halves (issue 19 item 3).

The shell host's root holds the cluster's operator CA (an ed25519 key, ``/etc/convocate/operator-ca``);
``convocate-host operator-cert`` signs each operator's own SSH key into an OpenSSH user certificate
whose key ID and only principal are the operator's name. On each SSH connection to an agent, the
operator's ``convocate`` asks for a challenge (``operator_challenge``: 32 random bytes, single use,
60 s) and answers with the certificate and a signature, made by the operator's own SSH agent, over
:func:`claim_data` (``operator_identify``). :func:`verify_claim` is the agent's check.

Why another operator cannot forge it: the certificate is public, but the signature needs the private
key it certifies, which stays in the operator's own ssh-agent; a certificate of one's own needs the
CA key, which is root's on the shell host; a signature binds the agent ID and a nonce that the agent
gave to this connection alone, so it cannot be replayed elsewhere or twice.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from dataclasses import dataclass

import asyncssh
from asyncssh.public_key import CERT_TYPE_USER, SSHOpenSSHCertificate

from convocate.common import messages
from convocate.common.errors import BadRequest, Forbidden

#: What every claim's signed data starts with (a domain separator: no other signature of the key fits).
CLAIM_CONTEXT = b"convocate-operator-claim-v1\0"
#: Random bytes in a challenge.
NONCE_BYTES = 32
#: Seconds a challenge stays usable.
NONCE_TTL_S = 60.0
#: Longest ``certificate`` accepted, in characters: an ed25519 user certificate line is ~600; room for
#: a few principals and an RSA-4096 subject key, nothing more.
MAX_CERTIFICATE_CHARS = 8192
#: Longest ``signature`` accepted, in base64 characters (an ed25519 signature blob is 83 bytes, 112 chars;
#: RSA-4096's ~530).
MAX_SIGNATURE_CHARS = 1024
#: Operator names: Debian's default user-name rule (adduser's NAME_REGEX) and no longer than 32, so a
#: name is also a valid session name (``convocate.common.model.validate_name``) and safe in a log line.
OPERATOR_NAME = re.compile(r"[a-z][a-z0-9._-]{0,31}\Z")


@dataclass(frozen=True)
class OperatorIdentity:
    """An operator proven on one connection.

    Attributes:
        name: The certificate's key ID (also one of its principals).
        fingerprint: ``SHA256:...`` of the certified key (the operator's own key).
        key_id: The certificate's key ID (the same as ``name`` today).
    """

    name: str
    fingerprint: str
    key_id: str

    def to_state(self) -> dict[str, object]:
        """What goes into ``Caller.state["operator"]`` (the audit trail reads it)."""
        return {"name": self.name, "fingerprint": self.fingerprint, "key_id": self.key_id, "verified": True}


def validate_operator_name(value: str, field: str = "name") -> str:
    """``value`` when it is an operator name (:data:`OPERATOR_NAME`).

    Raises:
        BadRequest: it is not.
    """
    if not OPERATOR_NAME.match(value):
        raise BadRequest(messages.BAD_OPERATOR_NAME.format(field=field, value=value))
    return value


def claim_data(agent_id: str, nonce: bytes) -> bytes:
    """The bytes an operator signs: ``CLAIM_CONTEXT + agent_id + NUL + nonce``.

    Binding the agent ID means a signature for one agent is worthless to another (which would otherwise
    be able to relay its own challenge to the operator).
    """
    return CLAIM_CONTEXT + agent_id.encode("ascii") + b"\0" + nonce


def bounded(value: str, field: str, limit: int) -> str:
    """``value`` when at most ``limit`` characters.

    Raises:
        BadRequest: longer.
    """
    if len(value) > limit:
        raise BadRequest(messages.OPERATOR_INPUT_TOO_LONG.format(field=field, limit=limit))
    return value


def parse_certificate(text: str) -> SSHOpenSSHCertificate:
    """An OpenSSH certificate line (``<algo>-cert-v01@openssh.com AAAA... [comment]``), its CA signature checked.

    asyncssh checks the certificate's own signature (by the key it names as signer) while parsing;
    whether that signer is *our* CA is :func:`verify_claim`'s business.

    Raises:
        BadRequest: not such a line, or one whose signature does not verify.
    """
    try:
        cert = asyncssh.import_certificate(text.strip())
    except (asyncssh.KeyImportError, ValueError, TypeError, binascii.Error, UnicodeError) as e:
        raise BadRequest(messages.OPERATOR_BAD_CERTIFICATE.format(detail=e)) from e
    except Exception as e:  # asyncssh's decoders raise others on truncated packets (PacketDecodeError, ...)
        raise BadRequest(messages.OPERATOR_BAD_CERTIFICATE.format(detail=f"{type(e).__name__}: {e}")) from e
    if not isinstance(cert, SSHOpenSSHCertificate):
        raise BadRequest(messages.OPERATOR_BAD_CERTIFICATE.format(detail="an X.509 certificate"))
    return cert


def decode_signature(text: str) -> bytes:
    """The SSH signature blob from its base64 text.

    Raises:
        BadRequest: not base64.
    """
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeError, ValueError) as e:
        raise BadRequest(messages.OPERATOR_BAD_SIGNATURE_FIELD.format(detail=f"not base64: {e}")) from e


def _when(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(min(seconds, 253402300799)))


def verify_claim(ca: asyncssh.SSHKey, certificate: str, signature: str, agent_id: str, nonce: bytes,
                 now: float | None = None) -> OperatorIdentity:
    """Check one ``operator_identify`` against this connection's challenge ``nonce``.

    Args:
        ca: The operator CA's public key (``/etc/convocate-agent/operator-ca.pub``).
        certificate: The certificate line, at most :data:`MAX_CERTIFICATE_CHARS`.
        signature: Base64 of the SSH signature blob over :func:`claim_data`, at most :data:`MAX_SIGNATURE_CHARS`.
        agent_id: This agent's ID.
        nonce: The challenge this connection was given (and has now used).
        now: Seconds since the epoch (tests); the current time otherwise.

    Returns:
        Who the operator is.

    Raises:
        BadRequest: the certificate or signature is not even well formed (or too long).
        Forbidden: well formed but not a proof: not a user certificate, another CA, outside its validity,
            its key ID not among its principals or not a name, or the signature not by its key over this
            connection's data.
    """
    # asyncssh (pinned 2.24.1) keeps the certificate's type, key ID and validity in private attributes
    # only (``_cert_type``, ``_key_id``, ``_valid_after``, ``_valid_before``); the unit tests read them
    # back from certificates made by ``ssh-keygen -s``, so a rename there fails them.
    bounded(certificate, "certificate", MAX_CERTIFICATE_CHARS)
    bounded(signature, "signature", MAX_SIGNATURE_CHARS)
    cert = parse_certificate(certificate)
    blob = decode_signature(signature)
    if cert._cert_type != CERT_TYPE_USER:
        raise Forbidden(messages.OPERATOR_NOT_USER_CERT)
    signer = cert.signing_key
    if signer.public_data != ca.public_data:
        raise Forbidden(messages.OPERATOR_UNKNOWN_CA.format(signer=signer.get_fingerprint("sha256"),
                                                            ca=ca.get_fingerprint("sha256")))
    now = time.time() if now is None else now
    if now < cert._valid_after:
        raise Forbidden(messages.OPERATOR_CERT_NOT_YET_VALID.format(when=_when(cert._valid_after)))
    if now >= cert._valid_before:
        raise Forbidden(messages.OPERATOR_CERT_EXPIRED.format(when=_when(cert._valid_before)))
    key_id = cert._key_id
    if key_id not in cert.principals:
        raise Forbidden(messages.OPERATOR_PRINCIPAL_MISMATCH.format(principals=list(cert.principals), key_id=key_id))
    try:
        validate_operator_name(key_id, "key_id")
    except BadRequest as e:
        raise Forbidden(messages.OPERATOR_BAD_KEY_ID.format(key_id=key_id, detail=e.message)) from e
    fingerprint = cert.key.get_fingerprint("sha256")
    try:
        valid = cert.key.verify(claim_data(agent_id, nonce), blob)
    except Exception:  # a malformed blob (wrong algorithm name, truncated): no proof either
        valid = False
    if not valid:
        raise Forbidden(messages.OPERATOR_BAD_CLAIM_SIGNATURE.format(fingerprint=fingerprint))
    return OperatorIdentity(name=key_id, fingerprint=fingerprint, key_id=key_id)
