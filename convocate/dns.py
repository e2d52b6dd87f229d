"""The cluster's DNS records for session names, kept in a dnsmasq hosts file (DESIGN §5).

status-serve owns the lines it writes and only those: each ends with a marker
comment ``# convocate <agent-id> <session-uuid>``. Every other line of the file
(hosts added by hand or by ``convocate-host create-vm``) is kept byte for
byte. A session with DNS name ``web`` on an agent at 10.0.0.5 gives
``10.0.0.5 web.<domain> web``; a name already inside the domain
(``web.<domain>``) is written as it is. The file is rendered whole from
status-serve's state, never from event text: every record is checked again
here (the name by :func:`convocate.common.model.validate_dns_name`, the address,
agent ID and session UUID by their own rules) and a record that fails is left
out and logged, so no value can add a line or a name outside the domain. The
file is rewritten atomically and only when its content changes; then dnsmasq
is sent SIGHUP, which makes it re-read its ``--addn-hosts`` files (dnsmasq(8),
SIGHUP).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path

from convocate.common.errors import BadRequest
from convocate.common.fsutil import atomic_write, read_token
from convocate.common.model import is_uuid4, validate_dns_name

log = logging.getLogger(__name__)

MARKER = "# convocate"


@dataclass(frozen=True, order=True)
class HostRecord:
    """One session's DNS record.

    Attributes:
        address: The agent host's IP address.
        name: The session's DNS name (lowercase, no domain).
        agent_id: The agent the session lives on.
        session_id: The session UUID.
    """

    address: str
    name: str
    agent_id: str
    session_id: str

    def line(self, domain: str) -> str:
        """The hosts-file line: ``ADDRESS NAME.DOMAIN NAME # convocate AGENT SESSION``.

        A name with a dot is already inside ``domain`` (:meth:`problem` made sure) and is written alone.
        """
        names = f"{self.name}.{domain} {self.name}" if domain and "." not in self.name else self.name
        return f"{self.address} {names} {MARKER} {self.agent_id} {self.session_id}"

    def problem(self, domain: str) -> str | None:
        """Why this record must not be written, or None when every field is what its rule allows."""
        if not is_ip(self.address):
            return f"address {self.address!r} is not an IP address"
        if not _AGENT_ID.match(self.agent_id):
            return f"agent ID {self.agent_id!r} is not 8 of a-z and 0-9"
        if not is_uuid4(self.session_id):
            return f"session ID {self.session_id!r} is not a UUIDv4"
        try:
            if validate_dns_name(self.name, domain or None) != self.name or not self.name:
                return f"DNS name {self.name!r} is not in canonical form"
        except BadRequest as e:
            return e.message
        return None


_AGENT_ID = re.compile(r"^[a-z0-9]{8}\Z")
_OURS = re.compile(r"\s# convocate [a-z0-9]{8} [0-9a-f-]{36}\s*$")


def one_per_session(records: list[HostRecord], running: set[tuple[str, str]]) -> list[HostRecord]:
    """``records`` with each session on one agent at most.

    A session is held by two agents only while a move is between its import on the target and the
    source's trash (convocate/move.py; an interrupted move can stay there). Its record is then the
    copy that runs; when not exactly one runs, it has no record until the move ends, rather than a
    name that may point at a host the session is not on (issue 18).

    Args:
        records: Every agent's records, in any order.
        running: ``(agent_id, session_id)`` of the copies that run.

    Returns:
        The records kept, in the order given.
    """
    holders: dict[str, list[str]] = {}
    for r in records:
        holders.setdefault(r.session_id, []).append(r.agent_id)
    kept = []
    for r in records:
        agents = holders[r.session_id]
        if len(agents) == 1:
            kept.append(r)
            continue
        runs = [a for a in agents if (a, r.session_id) in running]
        if runs == [r.agent_id]:
            kept.append(r)
    return kept


def is_ours(line: str) -> bool:
    """Whether a hosts-file line was written by status-serve (ends with its marker)."""
    return bool(_OURS.search(line))


def render_hosts(current: str, records: list[HostRecord], domain: str) -> str:
    """The new hosts file: every foreign line of ``current`` as it was, then our records, sorted.

    Args:
        current: The file's present content (``""`` if it does not exist).
        records: Every session record the shell knows of.
        domain: Cluster domain appended to each name (``""`` for none).

    Returns:
        The content to write.
    """
    foreign = [line for line in current.splitlines() if not is_ours(line)]
    valid = []
    for record in set(records):
        problem = record.problem(domain)
        if problem is None:
            valid.append(record)
        else:
            log.warning("dns: left out the record of session %r on agent %r: %s",
                        record.session_id, record.agent_id, problem)
    ours = [r.line(domain) for r in sorted(valid, key=lambda r: (r.name, r.agent_id, r.session_id))]
    lines = foreign + ours
    return "\n".join(lines) + "\n" if lines else ""


def is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


class HostsFile:
    """Writes the hosts file and tells dnsmasq.

    Args:
        path: The hosts file (``/var/lib/convocate/dnsmasq-hosts``).
        domain: Cluster domain.
        dnsmasq_pid_file: dnsmasq's PID file, for SIGHUP; None to not signal.
    """

    def __init__(self, path: Path, domain: str, dnsmasq_pid_file: Path | None) -> None:
        self.path = path
        self.domain = domain
        self.dnsmasq_pid_file = dnsmasq_pid_file

    def update(self, records: list[HostRecord]) -> bool:
        """Bring the file in step with ``records``; returns True if it changed (and dnsmasq was told)."""
        try:
            current = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            current = ""
        new = render_hosts(current, records, self.domain)
        if new == current:
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, new.encode(), mode=0o644)
        log.info("dns: %s now holds %d session record(s)", self.path, len(records))
        self.reload_dnsmasq()
        return True

    def reload_dnsmasq(self) -> None:
        """SIGHUP dnsmasq if its PID file names a live process."""
        if self.dnsmasq_pid_file is None:
            return
        pid = read_token(self.dnsmasq_pid_file)
        if not pid.isdigit():
            log.info("dns: no dnsmasq PID in %s; it will read %s when it starts", self.dnsmasq_pid_file, self.path)
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGHUP)
            return
        log.warning("dns: dnsmasq (pid %s from %s) is not running", pid, self.dnsmasq_pid_file)
