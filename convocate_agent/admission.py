"""Admission control: capacity layer 1 (DESIGN §4).

Before a session's container starts, the CPU and memory reservations of the
running sessions plus the request must fit within 90% of the host's CPUs and
memory. The arithmetic is a pure function; :class:`Admission` runs the check
and records the reservation under one lock, so concurrent starts cannot
overcommit between checking and starting.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from convocate.common.capacity import (  # noqa: F401  (re-exported: the agent's modules import them from here)
    LIMIT_FRACTION,
    HostResources,
    Reservation,
    check_admission,
    outside_memory_mb,
    read_meminfo,
)


class Admission:
    """Serialises admission decisions and holds reservations until the container runs.

    Args:
        host: The host's totals.
        running: Coroutine returning session UUID → reservation of every
            running session (read from Docker, one call).
        outside_memory: Returns the MiB the host uses outside the sessions now.
    """

    def __init__(self, host: HostResources, running: Callable[[], Awaitable[dict[str, Reservation]]],
                 outside_memory: Callable[[], int] = lambda: 0) -> None:
        self.host = host
        self._running = running
        self._outside = outside_memory
        self._lock = asyncio.Lock()
        self._pending: dict[str, Reservation] = {}

    async def reserved(self, exclude: str | None = None) -> Reservation:
        """Sum of running and in-flight reservations, optionally leaving one session out."""
        running = await self._running()
        total = Reservation()
        for sid, r in {**running, **self._pending}.items():
            if sid != exclude:
                total = total + r
        return total

    @contextlib.asynccontextmanager
    async def admit(self, session_id: str, request: Reservation) -> AsyncIterator[None]:
        """Check and reserve ``request`` for ``session_id`` for the duration of the block.

        The session's own current reservation (a restart of a running session)
        is not counted against it. Inside the block the caller starts the
        container; once it runs, Docker's list reports it and the pending
        entry is dropped.

        Raises:
            AdmissionDenied: it does not fit.
        """
        async with self._lock:
            check_admission(self.host, await self.reserved(exclude=session_id), request, self._outside())
            self._pending[session_id] = request
        try:
            yield
        finally:
            self._pending.pop(session_id, None)
