"""create-vm's admission, pure: the hypervisor's capacity, its domains' pledges, and reading virsh's output.

Nothing here does I/O. The parsers read what virsh, df, dpkg-query and qemu-img print;
:mod:`convocate_host.vm.virsh` runs those commands and builds a :class:`Hypervisor` from their
output. :func:`check_admission` applies the capacity rule of :mod:`convocate.common.capacity`
(its ``LIMIT_FRACTION``) to the pledges of every defined domain (DESIGN §6).
"""

from __future__ import annotations

import ipaddress
import json
import posixpath
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field

from convocate.common import messages
from convocate.common.capacity import LIMIT_FRACTION
from convocate.common.errors import AdmissionDenied

GIB = 1024 ** 3
MIB = 1024 ** 2
KIB = 1024
_UNITS = {"": 1, "b": 1, "bytes": 1, "k": KIB, "kib": KIB, "kb": 1000, "m": MIB, "mib": MIB, "mb": 1000 ** 2,
          "g": GIB, "gib": GIB, "gb": 1000 ** 3, "t": 1024 ** 4, "tib": 1024 ** 4, "tb": 1000 ** 4}


# --- capacity, pledges and admission ------------------------------------------------------------------
@dataclass(frozen=True)
class Resources:
    """An amount on each admission axis.

    Attributes:
        cpus: vCPUs.
        memory_kib: Memory in KiB.
        disk_bytes: Disk in bytes.
    """

    cpus: int = 0
    memory_kib: int = 0
    disk_bytes: int = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.cpus + other.cpus, self.memory_kib + other.memory_kib,
                         self.disk_bytes + other.disk_bytes)


@dataclass(frozen=True)
class HostCapacity:
    """The hypervisor's totals.

    Attributes:
        total: CPUs (``virsh nodeinfo`` CPU(s)), memory in KiB, and the capacity of the storage
            that holds the pool directory in bytes.
        source: Where CPU and memory were read (``virsh nodeinfo`` or ``/proc``).
        disk_source: Where the disk capacity was read (a storage pool, or ``df``).
    """

    total: Resources
    source: str
    disk_source: str


@dataclass(frozen=True)
class DiskRef:
    """A disk of a domain, as its XML names it (``<disk>``).

    Attributes:
        target: Its device name in the guest (``vda``).
        device: ``disk``, ``cdrom``, ``floppy`` or ``lun``.
        path: ``<source file>`` or ``<source dev>``, if any.
        pool: ``<source pool>`` of a ``type='volume'`` disk.
        volume: ``<source volume>`` of a ``type='volume'`` disk.
    """

    target: str
    device: str = "disk"
    path: str | None = None
    pool: str | None = None
    volume: str | None = None

    @property
    def key(self) -> str:
        """Identifies the storage, so a disk two domains share is counted once."""
        if self.path:
            return self.path
        return f"{self.pool}/{self.volume}" if self.volume else f"?{self.target}"


@dataclass(frozen=True)
class DomainConfig:
    """What a domain's persistent XML (``virsh dumpxml --inactive``) says about its pledge.

    Attributes:
        name: The domain name.
        vcpus: Maximum vCPUs (``<vcpu>``).
        memory_kib: Maximum memory (``<memory>``) in KiB.
        disks: Its ``<disk>`` devices.
        recorded: The attributes of its ``<convocate:vm>`` metadata, or None when create-vm did
            not make it.
    """

    name: str
    vcpus: int
    memory_kib: int
    disks: tuple[DiskRef, ...] = ()
    recorded: dict[str, str] | None = None


@dataclass(frozen=True)
class Hypervisor:
    """What the read-only probe found.

    Attributes:
        capacity: The host's totals.
        domains: Every defined domain (running or not).
        disk_sizes: Virtual capacity in bytes of each measured disk, by :attr:`DiskRef.key`.
        libvirt: libvirt answered (False on a host that has no libvirt yet).
        notes: Things the operator should know (disks that could not be measured).
    """

    capacity: HostCapacity
    domains: tuple[DomainConfig, ...] = ()
    disk_sizes: Mapping[str, int] = field(default_factory=dict)
    libvirt: bool = True
    notes: tuple[str, ...] = ()

    def domain(self, name: str) -> DomainConfig | None:
        return next((d for d in self.domains if d.name == name), None)

    @property
    def pledged(self) -> Resources:
        """The sum over every domain of vCPUs and maximum memory, and over every disk of its virtual size."""
        return Resources(sum(d.vcpus for d in self.domains), sum(d.memory_kib for d in self.domains),
                         sum(self.disk_sizes.values()))


def short_number(value: float) -> str:
    """``value`` with at most two decimals and no trailing zeros (``14.4``, ``450``), for messages."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


_AXES = (
    ("CPU", "cpus", lambda v: f"{short_number(v)} vCPUs"),
    ("RAM", "memory_kib", lambda v: f"{short_number(v / KIB)} MiB"),
    ("disk", "disk_bytes", lambda v: f"{short_number(v / GIB)} GiB"),
)


def check_admission(capacity: HostCapacity, pledged: Resources, asked: Resources, *, name: str, host: str) -> str:
    """Admit a VM only if pledged + asked stays within 90% of the host on every axis (DESIGN §6).

    The capacity rule of :mod:`convocate.common.capacity` (``LIMIT_FRACTION`` of each axis),
    applied to pledges rather than to running reservations: a stopped domain can start at any
    time, so it counts; and to disk as well as CPU and RAM.

    Args:
        capacity: The host's totals.
        pledged: The sum over every defined domain.
        asked: The new VM's pledge.
        name: The VM's name, for the message.
        host: The hypervisor, for the message.

    Returns:
        A line for the report with the figures of each axis.

    Raises:
        AdmissionDenied: on every axis that would pass 90%, with asked, pledged, allowed and total.
    """
    refused, figures = [], []
    for axis, attr, fmt in _AXES:
        total, held, ask = getattr(capacity.total, attr), getattr(pledged, attr), getattr(asked, attr)
        # A float, but a whole held + ask passes it exactly when it passes the exact 90% (totals below 2**50).
        allowed = total * LIMIT_FRACTION
        figures.append(f"{axis} {fmt(held)} pledged + {fmt(ask)} asked of {fmt(allowed)} allowed")
        if held + ask > allowed:
            refused.append(messages.VM_ADMISSION_AXIS.format(axis=axis, asked=fmt(ask), pledged=fmt(held),
                                                             allowed=fmt(allowed), total=fmt(total)))
    if refused:
        raise AdmissionDenied(messages.VM_ADMISSION_DENIED.format(name=name, host=host, axes="; ".join(refused)))
    return "admission: " + "; ".join(figures)


# --- parsing what virsh, df, dpkg and qemu-img print ------------------------------------------------------
def parse_fields(text: str) -> dict[str, str]:
    """``Key:   value`` lines (virsh nodeinfo, dominfo, vol-info, net-info) as a dict."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def parse_size(text: str | None, unit: str | None) -> int:
    """A libvirt scaled integer (``<memory unit='MiB'>``, ``<capacity unit='bytes'>``) in bytes."""
    try:
        return int(text or "0") * _UNITS[(unit or "").lower()]
    except (KeyError, ValueError) as e:
        raise ValueError(f"not a size: {text!r} {unit!r}") from e


def parse_nodeinfo(text: str) -> tuple[int, int]:
    """``virsh nodeinfo``: ``(CPUs, memory in KiB)``.

    Raises:
        ValueError: the output lacks ``CPU(s)`` or ``Memory size``.
    """
    fields = parse_fields(text)
    try:
        number, _, unit = fields["Memory size"].partition(" ")
        return int(fields["CPU(s)"]), parse_size(number, unit or "KiB") // KIB
    except KeyError as e:
        raise ValueError(f"virsh nodeinfo printed no {e}") from None


def parse_capacity(text: str) -> int:
    """``Capacity`` of ``virsh vol-info --bytes`` (``123 bytes``) or ``virsh domblkinfo`` (``123``), in bytes."""
    value = parse_fields(text).get("Capacity", "")
    number = value.split()[0] if value else ""
    if not number.isdigit():
        raise ValueError(f"no byte count in Capacity {value!r}")
    return int(number)


def parse_df(text: str) -> int:
    """The size in bytes of ``df -P -B1 PATH`` (POSIX format: the second field of the second line)."""
    lines = text.strip().splitlines()
    words = lines[-1].split() if len(lines) >= 2 else []
    if len(words) < 2 or not words[1].isdigit():
        raise ValueError(f"unexpected df output: {text!r}")
    return int(words[1])


def parse_pool_xml(text: str) -> tuple[str, str, int]:
    """``virsh pool-dumpxml``: ``(name, target path, capacity in bytes)``; capacity is 0 for an inactive pool."""
    root = ET.fromstring(text)
    cap = root.find("capacity")
    return (root.findtext("name", ""), posixpath.normpath(root.findtext("target/path", "") or "/"),
            parse_size(cap.text, cap.get("unit", "bytes")) if cap is not None else 0)


def parse_domifaddr(text: str, mac: str | None = None) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses in ``virsh domifaddr`` output, of the NIC with ``mac`` when given.

    The table is ``Name  MAC address  Protocol  Address``; a NIC with several addresses repeats
    only the address on the following lines (``-`` in the other columns).
    """
    found, current_mac = [], None
    for line in text.splitlines():
        words = line.split()
        if len(words) < 4 or words[0] == "Name" or (words[0].startswith("-") and len(words[0]) > 1):
            continue
        if words[1] != "-":
            current_mac = words[1].lower()
        if words[2] == "ipv4" and (mac is None or current_mac == mac.lower()):
            found.append(ipaddress.IPv4Interface(words[3]).ip)
    return found


def parse_dpkg_installed(text: str) -> set[str]:
    """Packages ``dpkg-query -W -f '${Package} ${db:Status-Status}\\n'`` reports as installed."""
    return {line.split()[0] for line in text.splitlines() if line.split()[1:] == ["installed"]}


def parse_image_info(text: str) -> tuple[str, int]:
    """``qemu-img info --output=json``: ``(format, virtual size in bytes)``."""
    info = json.loads(text)
    return str(info["format"]), int(info["virtual-size"])
