"""RFC 3339 timestamps with nanoseconds, as the wire protocol carries them.

The original agents are written in Go and emit ``time.RFC3339Nano``:
``2026-11-21T12:00:00.123456789Z``, trailing fractional zeros trimmed. Python's
``datetime`` holds microseconds only, so convocate keeps times as integer
nanoseconds since the epoch and converts at the edges.
"""

from __future__ import annotations

import calendar
import re
import time

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|z|[+-]\d{2}:\d{2})"
)


def format_rfc3339(ns: int) -> str:
    """Render nanoseconds since the epoch as RFC 3339 UTC (``...Z``).

    Args:
        ns: Nanoseconds since 1970-01-01T00:00:00Z.

    Returns:
        The timestamp, with the fraction trimmed of trailing zeros (omitted when zero).
    """
    secs, frac = divmod(ns, 1_000_000_000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    if frac:
        return f"{base}.{frac:09d}".rstrip("0") + "Z"
    return base + "Z"


def parse_rfc3339(text: str) -> int:
    """Parse an RFC 3339 timestamp into nanoseconds since the epoch.

    Args:
        text: e.g. ``2026-11-21T12:00:00.5Z`` or ``2026-11-21T13:00:00+01:00``.

    Returns:
        Nanoseconds since the epoch.

    Raises:
        ValueError: ``text`` is not an RFC 3339 date-time (RFC 3339 §5.6).
    """
    m = _RFC3339.fullmatch(text)
    if not m:
        raise ValueError(f"{text!r} is not an RFC 3339 timestamp")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour <= 23 and minute <= 59 and second <= 60):
        raise ValueError(f"{text!r} is not an RFC 3339 timestamp")
    frac = int((m.group(7) or "0").ljust(9, "0"))
    secs = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    zone = m.group(8)
    if zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        secs -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return secs * 1_000_000_000 + frac


def now_ns() -> int:
    """Current wall-clock time in nanoseconds since the epoch."""
    return time.time_ns()
