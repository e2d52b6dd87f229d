"""The capacity rule both roles use: host totals, reservations and the 90% admission limit (DESIGN §4).

Pure arithmetic and ``/proc/meminfo`` parsing, shared by the agent's admission
control (:mod:`convocate_agent.admission`, which enforces it) and the shell's
placement (:mod:`convocate.placement`, which predicts it from each agent's
``capacity`` answer), so the two can never disagree on what fits.

The rule: what is held on a host plus what is asked may not pass :data:`LIMIT_FRACTION`
of the host's total on any axis; a request that would pass it is refused whole, before
anything changes. Sessions and VMs differ in what counts as held, and on which axes:

- A session (:func:`check_admission`) holds its reservation (CPU cores and MiB) while it
  runs; the memory the host uses outside convocate counts too. The axes are CPU and memory.
- A VM (``convocate-host create-vm``, :func:`convocate_host.vm.preflight.check_admission`)
  holds its *pledge* while it is defined, running or not, since a stopped domain can start
  at any time: its vCPUs, its maximum memory and its disks' virtual sizes. The axes are CPU,
  RAM and disk; the host's memory is ``virsh nodeinfo``'s, or ``MemTotal`` of
  :func:`parse_meminfo` on a host without libvirt yet.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from convocate.common import messages
from convocate.common.errors import AdmissionDenied

#: Share of the host that sessions may reserve, and the slice's cap (DESIGN §4); VMs may pledge as much.
LIMIT_FRACTION = 0.9
#: Tolerance for float sums of CPU reservations (cores).
_EPSILON = 1e-9


@dataclass(frozen=True)
class Reservation:
    """CPU and memory reserved by one or more sessions.

    Attributes:
        cpus: Cores (float).
        memory_mb: MiB.
    """

    cpus: float = 0.0
    memory_mb: int = 0

    def __add__(self, other: Reservation) -> Reservation:
        return Reservation(self.cpus + other.cpus, self.memory_mb + other.memory_mb)


@dataclass(frozen=True)
class HostResources:
    """What the host has.

    Attributes:
        cpus: Usable CPUs (``sched_getaffinity``), in cores.
        memory_mb: ``MemTotal`` from ``/proc/meminfo``, in MiB.
    """

    cpus: float
    memory_mb: int

    @property
    def limits(self) -> Reservation:
        """The most sessions may reserve together: 90% of each axis."""
        return Reservation(self.cpus * LIMIT_FRACTION, int(self.memory_mb * LIMIT_FRACTION))

    @classmethod
    def probe(cls, meminfo: str = "/proc/meminfo") -> HostResources:
        """Read this host's CPUs and memory."""
        return cls(float(len(os.sched_getaffinity(0))), read_meminfo(meminfo).get("MemTotal", 0) // 1024)


def outside_memory_mb(sessions_bytes: int | None, meminfo: dict[str, int] | None = None) -> int:
    """Memory in use on the host that is not the sessions', in MiB.

    Args:
        sessions_bytes: What the sessions' cgroup parent uses now (None: unknown, counted as 0).
        meminfo: ``/proc/meminfo`` fields in KiB (read when omitted).

    Returns:
        ``MemTotal - MemAvailable - sessions``, never below 0.
    """
    info = meminfo if meminfo is not None else read_meminfo()
    used_kib = info.get("MemTotal", 0) - info.get("MemAvailable", 0)
    return max(0, used_kib // 1024 - (sessions_bytes or 0) // (1 << 20))


def parse_meminfo(text: str) -> dict[str, int]:
    """The text of ``/proc/meminfo`` as field → KiB (proc(5): ``Name:   value kB`` lines).

    A line without a colon and a number after it is passed over, so the text may hold other
    lines too (create-vm reads ``nproc; cat /proc/meminfo`` from a host in one command).
    """
    out: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        words = rest.split()
        if words and words[0].isdigit():
            out[name] = int(words[0])
    return out


def read_meminfo(path: str = "/proc/meminfo") -> dict[str, int]:
    """This host's ``/proc/meminfo`` as field → KiB (:func:`parse_meminfo`)."""
    with open(path, encoding="ascii") as f:
        return parse_meminfo(f.read())


def check_admission(host: HostResources, reserved: Reservation, request: Reservation, outside_mb: int = 0) -> None:
    """Refuse ``request`` if it does not fit beside ``reserved`` within the 90% limits.

    Args:
        host: The host's totals.
        reserved: Sum of the reservations already admitted.
        request: What the new session asks for.
        outside_mb: Memory the host uses outside convocate's sessions, in MiB;
            it counts against the memory limit like a reservation.

    Raises:
        AdmissionDenied: the first axis (cpus, then memory) that would exceed
            its limit, with the figures asked, reserved and allowed.
    """
    limits = host.limits
    if reserved.cpus + request.cpus > limits.cpus + _EPSILON:
        raise AdmissionDenied(messages.ADMISSION_DENIED.format(
            axis="cpus", asked=f"{request.cpus:g} cores", reserved=f"{reserved.cpus:g} cores",
            allowed=f"{limits.cpus:g} cores", total=f"{host.cpus:g} cores"))
    if reserved.memory_mb + outside_mb + request.memory_mb > limits.memory_mb:
        held = f"{reserved.memory_mb} MiB" + (f" (+{outside_mb} MiB used outside convocate)" if outside_mb else "")
        raise AdmissionDenied(messages.ADMISSION_DENIED.format(
            axis="memory", asked=f"{request.memory_mb} MiB", reserved=held,
            allowed=f"{limits.memory_mb} MiB", total=f"{host.memory_mb} MiB"))
