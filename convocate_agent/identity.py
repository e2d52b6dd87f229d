"""The agent's half of operator identity: ``operator_challenge``, ``operator_identify``, ``operator_whoami``.

These ops act on the SSH connection, not on a session: each gets the :class:`Caller` of the
connection its channel belongs to, and keeps what it learns in ``caller.state`` (shared by the
connection's channels, gone with it). ``state["operator"]`` is the proven operator
(:meth:`OperatorIdentity.to_state`), which the audit trail records and an attach over the same
connection inherits. The check itself is :func:`convocate.common.operator_claim.verify_claim`.

A refused claim leaves the connection as it was (unidentified, or identified by an earlier claim)
and usable; every refusal is logged with the reason.
"""

from __future__ import annotations

import base64
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

import asyncssh

from convocate.common import keys, messages, operator_claim
from convocate.common.errors import BadRequest, ConvocateError, Forbidden
from convocate.common.ops.params import OperatorChallengeParams, OperatorIdentifyParams, OperatorWhoamiParams
from convocate.common.paths import Paths
from convocate.common.sshpeers import Caller

log = logging.getLogger(__name__)

#: ``caller.state`` key of the connection's outstanding challenge: ``{"nonce": bytes, "expires": monotonic s}``,
#: or ``{"used": True}`` once an identify consumed it.
CHALLENGE_KEY = "operator_challenge"
#: ``caller.state`` key of the proven operator (the name the audit trail reads).
OPERATOR_KEY = "operator"


def _state(caller: Caller | str) -> dict[str, Any]:
    if not isinstance(caller, Caller):
        raise BadRequest(messages.OPERATOR_NO_CHANNEL_STATE)
    return caller.state


class OperatorOps:
    """The operator-identity ops of one agent.

    Args:
        paths: The agent's layout (the CA is :attr:`Paths.agent_operator_ca`, read at every identify, so
            installing or replacing it needs no restart).
        agent_id: This agent's ID (part of the signed data).
        clock: Monotonic seconds (tests).
    """

    def __init__(self, paths: Paths, agent_id: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.paths = paths
        self.agent_id = agent_id
        self.clock = clock

    def handlers(self) -> dict[str, Callable[[Any, Caller | str], Any]]:
        """Op name -> handler taking ``(params, caller)``, for :class:`convocate_agent.rpc.RpcDispatcher`."""
        return {"operator_challenge": self.challenge, "operator_identify": self.identify,
                "operator_whoami": self.whoami}

    async def challenge(self, params: OperatorChallengeParams, caller: Caller | str) -> dict[str, str]:
        """A fresh nonce for this connection; it replaces any earlier one.

        Returns:
            ``{"nonce": base64 of NONCE_BYTES random bytes, "agent_id": str, "expires_in": seconds}``.
        """
        state = _state(caller)
        nonce = secrets.token_bytes(operator_claim.NONCE_BYTES)
        state[CHALLENGE_KEY] = {"nonce": nonce, "expires": self.clock() + operator_claim.NONCE_TTL_S}
        return {"nonce": base64.b64encode(nonce).decode("ascii"), "agent_id": self.agent_id,
                "expires_in": operator_claim.NONCE_TTL_S}

    def _take_nonce(self, state: dict[str, Any]) -> bytes:
        """The connection's challenge, consumed (single use, even when the claim then fails)."""
        challenge = state.get(CHALLENGE_KEY)
        if challenge is None:
            raise Forbidden(messages.OPERATOR_NO_CHALLENGE)
        if challenge.get("used"):
            raise Forbidden(messages.OPERATOR_CHALLENGE_USED)
        state[CHALLENGE_KEY] = {"used": True}
        if self.clock() >= challenge["expires"]:
            raise Forbidden(messages.OPERATOR_CHALLENGE_EXPIRED.format(seconds=operator_claim.NONCE_TTL_S))
        return challenge["nonce"]

    def _ca(self) -> asyncssh.SSHKey:
        path = self.paths.agent_operator_ca
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise Forbidden(messages.OPERATOR_NO_CA.format(path=path, shell_path=Paths().operator_ca_pub)) from None
        except OSError as e:
            raise Forbidden(messages.OPERATOR_CA_UNREADABLE.format(path=path, detail=e)) from e
        try:
            return keys.parse_public_key(text, source=str(path))
        except ConvocateError as e:
            raise Forbidden(messages.OPERATOR_CA_UNREADABLE.format(path=path, detail=e)) from e

    async def identify(self, params: OperatorIdentifyParams, caller: Caller | str) -> dict[str, str]:
        """Check the claim against this connection's challenge; on success the connection is that operator's.

        Args:
            params: The certificate and the signature, each bounded when decoded
                (:class:`~convocate.common.ops.params.OperatorIdentifyParams`).

        Returns:
            ``{"name", "fingerprint"}`` of the operator.

        Raises:
            BadRequest: malformed certificate or signature, or a channel without connection state.
            Forbidden: no CA here, no/used/expired challenge, or a claim that does not hold (the reason named).
        """
        state = _state(caller)
        try:
            nonce = self._take_nonce(state)
            ca = self._ca()
            identity = operator_claim.verify_claim(ca, params.certificate, params.signature, self.agent_id, nonce)
        except ConvocateError as e:
            log.info("operator claim refused on connection from %s (key %s): %s", caller.peer, caller, e)
            raise
        state[OPERATOR_KEY] = identity.to_state()
        log.info("%s on connection from %s (key %s)",
                 messages.OPERATOR_IDENTIFIED.format(name=identity.name, fingerprint=identity.fingerprint),
                 caller.peer, caller)
        return {"name": identity.name, "fingerprint": identity.fingerprint}

    async def whoami(self, params: OperatorWhoamiParams, caller: Caller | str) -> dict[str, Any]:
        """Who this connection is: ``{"operator": {"name", "fingerprint", "key_id", "verified"} | None}``."""
        operator = _state(caller).get(OPERATOR_KEY)
        return {"operator": dict(operator) if operator else None}
