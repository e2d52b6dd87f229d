"""Pre-authentication limits of the SSH listeners: how many connections may start, from where.

sshd's rules (sshd_config(5)): ``MaxStartups`` as a hard cap, ``PerSourceMaxStartups`` with
``PerSourceNetBlockSize 32:64``; :class:`StartupGate` counts, :class:`FloodReport` summarises what
was refused. Pure: no sockets, no clock of its own (docs/security.md).
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass, field

from convocate.common import messages

#: Connections that have not authenticated yet, at most, in total: sshd's ``MaxStartups`` in its
#: single-number form (a hard cap; sshd's random early drop ``start:rate:full`` is not
#: implemented). 128 is sshd's default ``full`` (100) rounded up: an honest peer authenticates
#: within milliseconds, so even a shell host whose operators all reconnect at once stays far below.
MAX_STARTUPS = 128
#: Of those, at most this many from one source (sshd's ``PerSourceMaxStartups``), so that one
#: address cannot take every slot: a flood from fewer than ``MAX_STARTUPS / PER_SOURCE_MAX_STARTUPS``
#: sources leaves room for everyone else.
PER_SOURCE_MAX_STARTUPS = 32
#: How sources are grouped for :data:`PER_SOURCE_MAX_STARTUPS`, in prefix bits (sshd's
#: ``PerSourceNetBlockSize 32:64``): one IPv4 address, or one IPv6 /64 (what one host is given).
SOURCE_PREFIX_V4 = 32
SOURCE_PREFIX_V6 = 64
#: A flood's summary is logged once no connection was refused for this many seconds (more than the
#: 1, 2 and 4 s a refused client's SYN retransmissions come apart, so one burst is one line)...
FLOOD_QUIET_S = 5.0
#: ...or after this many seconds of a flood that goes on, and again for each such period.
FLOOD_REPORT_S = 60.0
#: Sources named in a flood summary, most refused first.
FLOOD_TOP_SOURCES = 5


def source_block(host: str) -> str:
    """The group a peer address counts in for the per-source cap (see :data:`SOURCE_PREFIX_V6`).

    Args:
        host: The peer's address as the socket reports it (``127.0.0.2``, ``2001:db8::1``,
            ``::ffff:192.0.2.1``).

    Returns:
        ``192.0.2.1`` for IPv4 (an IPv4-mapped IPv6 address counts as its IPv4 address),
        ``2001:db8::/64`` for IPv6; the text unchanged if it is not an address.
    """
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if isinstance(addr, ipaddress.IPv4Address):
        return str(ipaddress.ip_network(f"{addr}/{SOURCE_PREFIX_V4}", strict=False).network_address)
    return str(ipaddress.ip_network(f"{addr}/{SOURCE_PREFIX_V6}", strict=False))


class StartupGate:
    """Counts unauthenticated connections and says whether one more may start (pure, no sockets).

    The rule is sshd's ``MaxStartups N`` plus ``PerSourceMaxStartups M``: a
    new connection is refused while ``N`` connections in total, or ``M``
    from its source group, have not authenticated yet; authenticated
    connections do not count.

    Args:
        max_startups: The total cap.
        per_source: The cap per source group (:func:`source_block`).
    """

    def __init__(self, max_startups: int = MAX_STARTUPS, per_source: int = PER_SOURCE_MAX_STARTUPS) -> None:
        self.max_startups = max_startups
        self.per_source = per_source
        self.in_flight = 0
        self._by_source: Counter[str] = Counter()

    def admit(self, source: str) -> str | None:
        """Count a new connection from ``source`` in, unless a cap is reached.

        Returns:
            None when admitted (call :meth:`release` once it authenticates or
            goes away); otherwise which cap refused it, ``"total"`` or ``"per-source"``.
        """
        if self.in_flight >= self.max_startups:
            return "total"
        if self._by_source[source] >= self.per_source:
            return "per-source"
        self.in_flight += 1
        self._by_source[source] += 1
        return None

    def release(self, source: str) -> None:
        """Count out one admitted connection from ``source``."""
        self.in_flight -= 1
        self._by_source[source] -= 1
        if self._by_source[source] <= 0:
            del self._by_source[source]

    def from_source(self, source: str) -> int:
        """Unauthenticated connections from ``source`` now."""
        return self._by_source.get(source, 0)


@dataclass
class FloodReport:
    """What was refused since the last summary (pure; the listener decides when to log it).

    Attributes:
        refused: Refused connections by source group.
        caps: Refusals by the cap that refused them (``total``, ``per-source``, ``accept``).
        started: ``time.monotonic()`` of the first refusal of this period, or None.
        last: ``time.monotonic()`` of the latest refusal.
    """

    refused: Counter[str] = field(default_factory=Counter)
    caps: Counter[str] = field(default_factory=Counter)
    started: float | None = None
    last: float = 0.0

    def note(self, source: str, cap: str, now: float) -> bool:
        """Count one refusal; True if it starts a new period (the caller schedules the summary)."""
        first = self.started is None
        if first:
            self.started = now
        self.refused[source] += 1
        self.caps[cap] += 1
        self.last = now
        return first

    def due(self, now: float, quiet: float = FLOOD_QUIET_S, period: float = FLOOD_REPORT_S) -> bool:
        """Whether the summary should be logged now: quiet for ``quiet`` s, or ``period`` s long."""
        return self.started is not None and (now - self.last >= quiet or now - self.started >= period)

    def summary(self, now: float, gate: StartupGate) -> str:
        """The log line for this period, then start a new one."""
        total = sum(self.refused.values())
        top = ", ".join(f"{src} {n}" for src, n in self.refused.most_common(FLOOD_TOP_SOURCES))
        more = len(self.refused) - FLOOD_TOP_SOURCES
        line = messages.PREAUTH_FLOOD.format(
            count=total, seconds=now - (self.started or now), sources=len(self.refused),
            top=top + (f", {more} more" if more > 0 else ""),
            caps=", ".join(f"{cap} {n}" for cap, n in sorted(self.caps.items())),
            max_startups=gate.max_startups, per_source=gate.per_source)
        self.refused.clear()
        self.caps.clear()
        self.started = None
        return line
