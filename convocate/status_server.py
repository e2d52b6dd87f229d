"""``convocate status-serve``: the shell host's status listener (tcp/223) and local fan-out.

Agents connect with their ``agent_to_shell`` key (listed in
``status_authorized_keys``, re-read on change) and push events on the
``convocate-status`` subsystem. status-serve

- records each agent's last-seen time, version, image and capacity, and marks
  an agent stale after 3 missed heartbeats;
- fans every event out to local subscribers on the Unix socket
  ``/run/convocate/status.sock`` (group ``claude``, 0660) as newline JSON,
  starting each new subscriber with a replay of every agent's latest state
  (``agent.status``) and a ``replay.done`` marker; lines go out in batches,
  and a subscriber that falls 16 MiB behind is disconnected, never waited for;
- keeps the dnsmasq hosts file in step with the sessions' DNS names, from the
  events and from a ``list`` of the agent after each ``agent.started``;
- keeps a copy of each agent's own ``list``, ``capacity`` and ``ping`` answers,
  taken again after every session event and every heartbeat (one refresh at a time
  per agent), and replays it to each new subscriber as ``agent.sessions`` with
  ``current`` saying whether it may answer for the agent (issue 17: ``convocate ls``
  and ``agents`` read it, :mod:`convocate.localstatus`).

Every session is untrusted, and so is what an agent says for it (issue 14):

- a status key speaks for the one agent whose registry entry holds it
  (``/etc/convocate/agents/<id>/status_ed25519_key.pub``, recorded by
  ``convocate-host init-agent`` or ``update``), never for the agent its
  ``status_authorized_keys`` comment names; a key no entry holds is refused;
  an event claiming another agent is refused and logged;
- every event's fields are checked for type and size (:func:`~convocate.status_events.check_event`), the
  DNS name by :func:`convocate.common.model.validate_dns_name` inside the
  cluster's domain; a bad event is refused and logged, and the link stays up;
- the hosts file is rendered whole from the state, never from event text;
- an agent's links are counted per connection: a second connection with the
  same key ending does not mark the live one down;
- a local subscriber may send nothing but newline-terminated lines; one that sends
  :data:`~convocate.status_socket.SUBSCRIBER_INPUT_MAX` bytes without a newline is disconnected. The one line
  that does something is ``{"refresh": "<agent-id>"}`` of a known agent: list that
  agent again now (a CLI that just changed something there asks for it, so that its
  next ``ls`` reads the copy instead of the agent, issue 17); refreshes of an agent
  run one at a time, so asking again and again costs one list in flight. Anything
  else is discarded.

This module holds the configuration and the server: the agents' SSH links and the refreshes of
their copies. The rest is beside it: :mod:`convocate.status_events` (the events' field rules),
:mod:`convocate.status_hub` (agent states and fan-out, no sockets), :mod:`convocate.status_socket`
(the local subscribers) and :mod:`convocate.status_dns` (the hosts file).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh

from convocate.client import AgentClient
from convocate.common import keys, startinputs
from convocate.common.constants import STATUS_PORT
from convocate.common.daemon import serve_until_signalled
from convocate.common.errors import BadRequest, ConfigError, ConvocateError, ProtocolError
from convocate.common.framing import LineTooLong, read_frame_batches
from convocate.common.fsutil import read_token
from convocate.common.ops.params import CapacityParams, ListParams, PingParams
from convocate.common.paths import CLAUDE_USER, Paths
from convocate.common.protocol import STATUS_SUBSYSTEM, Event
from convocate.common.sshpeers import Caller, format_address
from convocate.common.sshserver import SubsystemListener
from convocate.common.timefmt import now_ns
from convocate.common.version import __version__
from convocate.dns import HostsFile
from convocate.registry import load_agent, status_key_bindings
from convocate.status_dns import SessionDns
from convocate.status_events import check_event
from convocate.status_hub import StatusHub
from convocate.status_socket import LocalSocket

log = logging.getLogger(__name__)

#: Bytes of an agent's events handled between two yields to the loop (about 70 heartbeats), so that
#: neither one busy agent nor a large read holds up the other agents and the local socket's writer:
#: the loop turns every few ms, and each turn's fan-out stays smaller than a Unix socket's send buffer.
AGENT_BATCH_BYTES = 8 * 1024
DEFAULT_DOMAIN = "convocate.internal"


@dataclass
class StatusConfig:
    """Everything ``convocate status-serve`` needs.

    Attributes:
        paths: Installation layout (``CONVOCATE_ROOT`` aware).
        listen: ``HOST:PORT`` of the SSH listener; ``:223`` is every address, port 223.
        domain: Cluster DNS domain (``/etc/convocate/domain``, else ``convocate.internal``).
        dnsmasq_pid_file: dnsmasq's PID file for reloads; None to never signal it.
        socket_group: Group given the local socket.
        shutdown_timeout: Seconds the whole shutdown may take (under the unit's ``TimeoutStopSec=30s``).
    """

    paths: Paths
    listen: str = f":{STATUS_PORT}"
    domain: str | None = None
    dnsmasq_pid_file: Path | None = Path("/run/dnsmasq/dnsmasq.pid")
    socket_group: str = CLAUDE_USER
    shutdown_timeout: float = 20.0

    def __post_init__(self) -> None:
        if self.domain is None:
            self.domain = read_token(self.paths.shell_domain_file) or DEFAULT_DOMAIN


@dataclass(eq=False)  # hashed by identity: one token per connection in AgentState.links
class _AgentLink:
    """One agent's status channel: who opened it and the agent ID its key is bound to in the registry."""

    caller: Caller
    agent_id: str
    peer_ip: str


class StatusServer:
    """The status listener, the local socket, stale detection and DNS, until shut down.

    Args:
        config: The settings to run with.
    """

    def __init__(self, config: StatusConfig) -> None:
        self.config = config
        self.hub = StatusHub()
        self.dns = SessionDns(config.paths, self.hub,
                              HostsFile(config.paths.dnsmasq_hosts, config.domain or "", config.dnsmasq_pid_file))
        self.local = LocalSocket(self.hub, config.paths.status_socket, config.socket_group, self._want_listing)
        self.listener: SubsystemListener | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._clients: dict[str, AgentClient] = {}
        self._refreshing: set[str] = set()

    async def start(self) -> list[tuple[str, int]]:
        """Open the local socket and the SSH listener; returns the bound listener addresses.

        Raises:
            ConfigError: the status host key is missing or invalid.
            OSError: an address or the socket path cannot be bound.
        """
        paths = self.config.paths
        started_with = startinputs.digest(paths.shell_start_inputs())
        if not paths.status_host_key.exists():
            raise ConfigError(f"{paths.status_host_key} is missing: run `convocate-host init-shell`, "
                              "which creates the status host key")
        host_key = keys.load_private_key(paths.status_host_key)
        await self.local.open()
        self.listener = SubsystemListener(
            listen=self.config.listen, default_port=STATUS_PORT, host_key=host_key,
            authorized_keys=paths.status_authorized_keys, subsystems=frozenset({STATUS_SUBSYSTEM}),
            handler=self._handle, server_version=f"convocate-status_{__version__}",
        )
        addresses = await self.listener.start()
        self._spawn(self._stale_loop())
        await self.dns.update()
        for addr in addresses:
            log.info("convocate status-serve %s listening on %s; local socket %s; dns %s (domain %s)",
                     __version__, format_address(addr), paths.status_socket, paths.dnsmasq_hosts, self.config.domain)
        try:
            startinputs.record(paths.run_dir, started_with)
        except OSError as e:  # only dpkg-reconfigure's restart decision needs it
            log.warning("cannot record what status-serve started with in %s: %s", paths.run_dir, e)
        return addresses

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- agents ---------------------------------------------------------------------------
    def _handle(self, process: asyncssh.SSHServerProcess, caller: Caller) -> Any:
        return self._spawn(self._serve_agent(process, caller))

    async def _serve_agent(self, process: asyncssh.SSHServerProcess, caller: Caller) -> None:
        agent_id = (await asyncio.to_thread(status_key_bindings, self.config.paths)).get(caller.fingerprint)
        if agent_id is None:
            log.warning("status: refused a link from %s: key %s is bound to no agent in %s (run `convocate-host "
                        "init-agent` or `update` for the agent, which records its status key there)",
                        caller.peer, caller.fingerprint, self.config.paths.agents_dir)
            with contextlib.suppress(Exception):
                process.exit(1)
            return
        link = _AgentLink(caller, agent_id, caller.peer.rsplit(":", 1)[0].strip("[]"))
        self.hub.connected(agent_id, caller.peer, link)
        try:
            # Whole reads (READ_CHUNK: what the channel holds), handled a batch at a time.
            async for frames in read_frame_batches(process.stdin, batch_bytes=AGENT_BATCH_BYTES):
                for frame in frames:
                    self._take(link, frame)
                self.local.flush()
                # A read that finds data returns without suspending: yield, or this agent
                # would hold the loop for as long as it keeps sending.
                await asyncio.sleep(0)
        except (OSError, asyncssh.Error) as e:
            log.info("status: connection from %s ended: %s", caller, e)
        finally:
            still_open = self.hub.disconnected(agent_id, link)
            if still_open:
                log.info("status: a link of agent %s from %s closed; %d still open", agent_id, caller.peer,
                         still_open)
            else:
                log.info("status: agent %s disconnected", agent_id)
            with contextlib.suppress(Exception):
                process.exit(0)

    def _take(self, link: _AgentLink, frame: bytes | LineTooLong) -> None:
        """Handle one line from an agent: parse, check the agent ID, record and fan out."""
        if isinstance(frame, LineTooLong):
            log.warning("status: %s sent an oversized line; ignored", link.caller)
            return
        try:
            event = Event.parse(frame)
        except BadRequest as e:
            log.warning("status: %s sent a bad event: %s", link.caller, e)
            return
        if event.agent_id != link.agent_id:
            log.warning("status: refused an event claiming agent %r on the connection of agent %s (key %s)",
                        event.agent_id[:64], link.agent_id, link.caller.fingerprint)
            return
        try:
            check_event(event, self.config.domain)
        except BadRequest as e:
            log.warning("status: refused an event of agent %s: %s", link.agent_id, e)
            return
        self.dns.saw(link.agent_id, link.peer_ip)
        try:
            dns_changed = self.hub.record(event)
        except ProtocolError as e:  # its rendering for the local socket is over the line limit
            log.warning("status: event %s of agent %s not passed on: %s", event.type, link.agent_id, e)
            return
        if dns_changed:
            self._spawn(self.dns.update())
        if self.hub.wants_refresh(event):
            self._want_listing(link.agent_id)

    def _want_listing(self, agent_id: str) -> None:
        """List the agent again; one refresh at a time per agent, which repeats while events keep coming."""
        self.hub.agent(agent_id).listing_pending = True
        if agent_id not in self._refreshing:
            self._refreshing.add(agent_id)
            self._spawn(self._resync(agent_id))

    async def _resync(self, agent_id: str) -> None:
        """Take the agent's ``list``, ``capacity`` and ``ping`` again, until no event came during one.

        The sessions' DNS names follow the list (events may have been dropped), and the answers
        are the copy the replay's ``agent.sessions`` carries. A failure leaves the copy marked
        not current until the next event or heartbeat asks again.
        """
        state = self.hub.agent(agent_id)
        try:
            client = self._clients.get(agent_id)
            if client is None:
                try:
                    client = self._clients[agent_id] = AgentClient(load_agent(self.config.paths, agent_id))
                except ConfigError as e:
                    log.info("status: agent %s is not in the registry (%s); DNS follows its events only", agent_id, e)
                    state.listing_error = f"not in the shell's registry ({e})"
                    state.listing_pending = False
                    state.refresh_mono = self.hub.clock()
                    return
            while state.listing_pending:
                state.listing_pending = False
                asked_ns, asked_mono = now_ns(), self.hub.clock()
                state.refresh_mono = asked_mono
                try:
                    views, capacity, ping = await asyncio.gather(
                        client.request(ListParams()), client.request(CapacityParams()), client.request(PingParams()))
                except (ConvocateError, BadRequest) as e:
                    log.warning("status: cannot list agent %s: %s", agent_id, e)
                    state.listing_error = str(e) or type(e).__name__
                    state.listing_pending = False
                    return
                state.listing = [view.received for view in views]
                state.listing_extra = {"capacity": capacity, "ping": ping.received}
                state.listed_ns, state.listed_mono, state.listing_error = asked_ns, asked_mono, ""
                if self.hub.resync(agent_id, self.hub.valid_names(views, self.config.domain)):
                    await self.dns.update()
        finally:
            self._refreshing.discard(agent_id)

    async def _stale_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.hub.check_stale()

    # --- lifetime --------------------------------------------------------------------------
    async def serve(self) -> None:
        """Start, serve until SIGTERM or SIGINT, then shut down (:func:`.serve_until_signalled`).

        The shutdown may take ``config.shutdown_timeout`` seconds; a second signal during it ends
        status-serve at once.

        Raises:
            ConfigError: see :meth:`start`.
            OSError: see :meth:`start`.
        """
        await serve_until_signalled(self.start, self.shutdown, name="convocate status-serve",
                                    shutdown_timeout_s=self.config.shutdown_timeout)

    async def shutdown(self) -> None:
        """Close the listener, the local socket and every connection."""
        if self.listener is not None:
            await self.listener.stop_accepting()
        self.local.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.listener is not None:
            await self.listener.close_connections()
        await asyncio.gather(*(c.close() for c in self._clients.values()), return_exceptions=True)
        log.info("convocate status-serve stopped")
