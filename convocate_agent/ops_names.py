"""What must be unique among an agent's sessions: DNS names and ports (DESIGN §3 port rules).

Part of :class:`~convocate_agent.service.AgentService` as a mixin (why, in that module's docstring),
shared by ``create`` and ``edit`` (:mod:`convocate_agent.ops_lifecycle`), ``restore``
(:mod:`convocate_agent.ops_admin`) and a move's import (:mod:`convocate_agent.transfer`), each
of which holds ``_names_lock`` from its check to its record.
"""

from __future__ import annotations

import errno
import socket

from convocate.common import messages
from convocate.common.errors import Conflict
from convocate.common.model import AUTO_PORT_LOW, PORT_AUTO, PORT_MAX, SessionMeta
from convocate_agent.state import SessionState


class NameChecks:
    """``_check_dns``, ``_resolve_port`` and ``_others``: the checks behind ``_names_lock``.

    Their callers hold ``_names_lock`` from the check to their record (these never take it), and
    ``create`` keeps the sessions in between in ``_creating``, whose names and ports are taken
    too. The annotations below are every shared part it uses; :class:`~convocate_agent.service.AgentService`
    provides them.
    """

    # Shared parts (AgentService.__init__).
    state: SessionState
    _creating: dict[str, SessionMeta]

    def _check_dns(self, dns_name: str, others: list[SessionMeta]) -> None:
        if not dns_name:
            return
        for other in others:
            if other.dns_name == dns_name:
                raise Conflict(messages.DNS_NAME_IN_USE.format(dns_name=dns_name, owner=other.uuid))

    def _resolve_port(self, port: int, protocol: str, others: list[SessionMeta]) -> int:
        """Turn a requested port into the one to store (DESIGN §3 port rules).

        Args:
            port: 0 none, -1 auto, 1-65535 explicit.
            protocol: ``tcp`` or ``udp``.
            others: The agent's other sessions.

        Raises:
            Conflict: an explicit port is used by another session or busy on the host;
                no free port is left for auto.
        """
        if port == 0:
            return 0
        used = {o.port: o for o in others if o.port and o.protocol == protocol}
        if port == PORT_AUTO:
            for candidate in range(AUTO_PORT_LOW, PORT_MAX + 1):
                if candidate not in used and _port_free_on_host(candidate, protocol):
                    return candidate
            raise Conflict(messages.NO_FREE_PORT.format(protocol=protocol, low=AUTO_PORT_LOW))
        if port in used:
            raise Conflict(messages.PORT_IN_USE.format(port=port, protocol=protocol, owner=used[port].uuid))
        if not _port_free_on_host(port, protocol):
            raise Conflict(messages.PORT_BUSY_ON_HOST.format(port=port, protocol=protocol))
        return port

    def _others(self, exclude: str) -> list[SessionMeta]:
        """The other sessions, and the creates still writing theirs (their names and ports are taken)."""
        return [m for m in self.state.metas() + list(self._creating.values()) if m.uuid != exclude]


def _port_free_on_host(port: int, protocol: str) -> bool:
    """Whether ``port`` can be bound on all IPv4 addresses for ``protocol`` right now."""
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        if kind == socket.SOCK_STREAM:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True
