"""The dnsmasq hosts file status-serve keeps in step with the sessions' DNS names (DESIGN §5).

Rendered whole from the :class:`~convocate.status_hub.StatusHub`'s state, never from event text:
each named session gets its agent host's address (the registry's, resolved if a name, else the
address its status link came from), one record per session (:func:`convocate.dns.one_per_session`:
of two copies during a move, the one that runs).
"""

from __future__ import annotations

import asyncio
import logging
import socket

from convocate.common.errors import ConfigError
from convocate.common.paths import Paths
from convocate.dns import HostRecord, HostsFile, is_ip, one_per_session
from convocate.registry import load_agent
from convocate.status_hub import StatusHub

#: status-serve's log lines keep the logger name they have always had (its log format prints it).
log = logging.getLogger("convocate.status_server")


class SessionDns:
    """Writes ``hosts`` from ``hub``'s sessions, one update at a time.

    Args:
        paths: Installation layout (the agent registry).
        hub: The agents' states (their sessions' DNS names and which copies run).
        hosts: The hosts file (and the dnsmasq to signal when it changes).
    """

    def __init__(self, paths: Paths, hub: StatusHub, hosts: HostsFile) -> None:
        self.paths = paths
        self.hub = hub
        self.hosts = hosts
        self._peer_ips: dict[str, str] = {}
        self._lock = asyncio.Lock()

    def saw(self, agent_id: str, peer_ip: str) -> None:
        """The first address an event of ``agent_id`` came from: its address when the registry has none."""
        if agent_id not in self._peer_ips:
            self._peer_ips[agent_id] = peer_ip

    async def _agent_address(self, agent_id: str) -> str | None:
        """The agent host's IP: the registry's address (resolved if a name), else its status peer address."""
        try:
            address = load_agent(self.paths, agent_id).address
        except ConfigError:
            return self._peer_ips.get(agent_id)
        if is_ip(address):
            return address
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(address, None, type=socket.SOCK_STREAM)
            return infos[0][4][0]
        except OSError as e:
            log.warning("dns: cannot resolve agent %s address %s: %s", agent_id, address, e)
            return self._peer_ips.get(agent_id)

    async def update(self) -> None:
        """Rewrite the hosts file from the hub's state (a write that fails is logged, not raised)."""
        async with self._lock:
            records: list[HostRecord] = []
            for state in list(self.hub.agents.values()):
                names = {sid: name for sid, name in state.sessions.items() if name}
                if not names:
                    continue
                address = await self._agent_address(state.agent_id)
                if address is None:
                    continue
                records += [HostRecord(address, name, state.agent_id, sid) for sid, name in names.items()]
            records = one_per_session(records, self.hub.running_copies())
            try:
                await asyncio.to_thread(self.hosts.update, records)
            except OSError as e:
                log.error("dns: cannot write %s: %s", self.hosts.path, e)
