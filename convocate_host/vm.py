"""``convocate-host create-vm``: turn a host into a KVM hypervisor and boot an Ubuntu VM on it (DESIGN §6).

The command runs in this order, and the first step is the only one that may refuse:

1. **Admission**, read-only: the hypervisor's capacity (``virsh nodeinfo``; the storage pool that
   holds the pool directory, else ``df`` of it; ``nproc`` and ``/proc/meminfo`` on a host without
   libvirt yet) and what every defined domain, running or not, has *pledged*: its vCPUs, its
   maximum memory and the virtual capacity of its disks. The VM is refused when pledged + asked
   would pass 90% of the host on any axis (CPU, RAM, disk), before a package, a file or a domain
   is touched.
2. The KVM/libvirt stack (Debian/Ubuntu packages), only what is missing.
3. The VM's files in the pool directory: the cloud image (downloaded once, checked against the
   ``SHA256SUMS`` published beside it), the OS disk (a qcow2 copy of the image grown to
   ``--osdisk``), the data disk (an empty qcow2 of ``--datadisk``), and the cloud-init NoCloud
   seed ISO.
4. The libvirt domain: defined, started and marked autostart in one ``virsh`` session.
5. The VM's address (static, or its DHCP lease) and its DNS record on the shell host.

Every step is idempotent: a second run with the same spec finds the domain defined with the
same spec, reports it kept and changes nothing; a domain of that name with another spec is an
error, never "fixed".

The pure core (spec validation, parsing of ``virsh`` output, admission arithmetic, domain XML,
cloud-init seed, hosts-file record) does no I/O; :func:`create_vm` and :func:`register_vm_dns`
drive a :class:`~convocate_host.target.Target` around it. Every ``virsh`` command goes to the
libvirt URI given (``qemu:///system`` by default), so tests point them at libvirt's ``test``
driver. Rules come from libvirt's Domain XML format (https://libvirt.org/formatdomain.html),
the test driver's node file format (``examples/xml/test/testnode.xml`` in libvirt), and
cloud-init's NoCloud datasource and module docs (``cc_disk_setup``, ``cc_mounts``,
``cc_write_files``, ``cc_runcmd``, ``cc_power_state_change``, network config version 2).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import ipaddress
import json
import posixpath
import re
import shlex
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from convocate.common import keys, messages
from convocate.common.errors import AdmissionDenied, BadRequest, ConfigError, Conflict
from convocate.common.hostsetup import StepReport
from convocate.common.paths import Paths
from convocate_host.debs import APT_ENV
from convocate_host.report import report_for
from convocate_host.target import (
    ABSENT,
    CommandResult,
    FileChanged,
    HostError,
    Target,
    add_ssh_options,
    open_target,
)

DEFAULT_URI = "qemu:///system"
#: libvirt's own image directory on Debian and Ubuntu (libvirt-daemon-system creates it, mode 0711).
DEFAULT_POOL_DIR = "/var/lib/libvirt/images"
#: Ubuntu 24.04 LTS (noble) server cloud image; ``SHA256SUMS`` lies in the same directory.
UBUNTU_CLOUD_IMAGE = "https://cloud-images.ubuntu.com/releases/noble/release/ubuntu-24.04-server-cloudimg-amd64.img"
#: The NAT network ``libvirt-daemon-config-network`` defines (virbr0, 192.168.122.0/24, DHCP).
DEFAULT_NETWORK = "default"
#: The cluster's DNS domain when the shell host names none; the same default as status-serve's
#: (``convocate.status_server.DEFAULT_DOMAIN``), which convocate_host may not import.
DEFAULT_DOMAIN = "convocate.internal"
#: Pledged + asked must stay within this share of the host on every axis (DESIGN §6).
ADMISSION_PERCENT = 90
#: What a KVM hypervisor needs (Debian 12 and Ubuntu 24.04 names): the emulator, qemu-img, the
#: libvirt daemon (which pulls in the ``default`` NAT network) and virsh, dnsmasq for that
#: network's DHCP (only a Recommends of libvirt-daemon-system), genisoimage for the seed ISO,
#: curl to fetch the cloud image.
KVM_PACKAGES = ("qemu-system-x86", "qemu-utils", "libvirt-daemon-system", "libvirt-daemon-driver-qemu",
                "libvirt-clients", "dnsmasq-base", "genisoimage", "curl", "ca-certificates")
#: Namespace of the ``<metadata>`` element that records the spec a domain was made from. libvirt
#: keeps one element per custom namespace under ``<metadata>`` (formatdomain, "General metadata").
METADATA_NS = "urn:x-convocate:create-vm:1"
#: ext4 label of the data disk's filesystem (at most 16 bytes, mke2fs(8) -L).
DATA_LABEL = "convocate-var"
#: Marks the hosts-file lines create-vm owns; status-serve's own marker is ``# convocate <agent>
#: <uuid>``, so status-serve keeps these lines as records it does not own (DESIGN §5).
DNS_MARKER = "# convocate-vm"
#: How long to wait for a DHCP lease, in seconds, and how often to ask.
IP_WAIT_S = 180.0
IP_POLL_S = 3.0
#: Held on the hypervisor (flock(1)) from the admission check to the domain's definition, so two
#: create-vm runs cannot both admit a VM into the same headroom; and how long to wait for it.
LOCK_PATH = "/run/lock/convocate-create-vm.lock"
LOCK_WAIT_S = 600.0
#: virsh must print in English: its output is parsed.
_VIRSH_ENV = ("env", "LC_ALL=C")
GIB = 1024 ** 3
MIB = 1024 ** 2
KIB = 1024

ET.register_namespace("convocate", METADATA_NS)

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_NET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SAFE_PATH = re.compile(r"/[A-Za-z0-9._/+-]*")
_SAFE_TOKEN = re.compile(r"[A-Za-z0-9_./:=@+,-]+")
_RAM = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([MG]?)(?:I?B)?\s*", re.I)
_UNITS = {"": 1, "b": 1, "bytes": 1, "k": KIB, "kib": KIB, "kb": 1000, "m": MIB, "mib": MIB, "mb": 1000 ** 2,
          "g": GIB, "gib": GIB, "gb": 1000 ** 3, "t": 1024 ** 4, "tib": 1024 ** 4, "tb": 1000 ** 4}


class HypervisorError(HostError):
    """The hypervisor cannot run the VM as asked (no KVM, no libvirt, no such network, no apt)."""


# --- the spec ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NetworkRef:
    """Where the VM's virtio NIC plugs in.

    Attributes:
        kind: ``network`` (a libvirt network, ``<interface type='network'>``) or ``bridge`` (a
            host bridge, ``<interface type='bridge'>``).
        name: The network's or the bridge's name.
    """

    kind: str
    name: str

    def __str__(self) -> str:
        return self.name if self.kind == "network" else f"bridge:{self.name}"


@dataclass(frozen=True)
class VMSpec:
    """Everything a new VM is made from; build it with :func:`make_spec`, which checks every field.

    Attributes:
        name: The domain name, the VM's host name and its DNS name: one RFC 1123 label.
        cpus: vCPUs (``<vcpu>``).
        ram_mib: Memory in MiB (``<memory>``).
        osdisk_gib: Virtual size of the OS disk (vda) in GiB.
        datadisk_gib: Virtual size of the data disk (vdb, mounted at /var) in GiB.
        ssh_key: The OpenSSH public key line authorized for the image's default user
            (``ubuntu`` on Ubuntu cloud images).
        image: The cloud image: an absolute path on the hypervisor, or an http(s) URL.
        network: Where the NIC plugs in.
        ip: A static IPv4 address with its prefix, or None for DHCP.
        gateway: The default gateway with a static address.
        nameservers: DNS servers with a static address.
        pool_dir: Directory on the hypervisor that holds the image, disks and seed.
        domain: The cluster's DNS domain (the VM's FQDN is ``name.domain``); ``""`` for none.
    """

    name: str
    cpus: int
    ram_mib: int
    osdisk_gib: int
    datadisk_gib: int
    ssh_key: str
    image: str = UBUNTU_CLOUD_IMAGE
    network: NetworkRef = NetworkRef("network", DEFAULT_NETWORK)
    ip: ipaddress.IPv4Interface | None = None
    gateway: ipaddress.IPv4Address | None = None
    nameservers: tuple[ipaddress.IPv4Address, ...] = ()
    pool_dir: str = DEFAULT_POOL_DIR
    domain: str = ""

    @property
    def mac(self) -> str:
        """The NIC's MAC address: QEMU's locally administered prefix 52:54:00 and 3 bytes of SHA-256(name).

        Derived from the name so the same spec always gives the same domain XML, and the static
        network config can match the NIC by MAC.
        """
        digest = hashlib.sha256(self.name.encode()).digest()
        return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])

    @property
    def asked(self) -> Resources:
        """What the VM pledges: its vCPUs, memory and both disks' virtual sizes."""
        return Resources(self.cpus, self.ram_mib * KIB, (self.osdisk_gib + self.datadisk_gib) * GIB)

    @property
    def image_is_url(self) -> bool:
        return self.image.startswith(("https://", "http://"))


def parse_ram(value: str | int) -> int:
    """``--ram``: MiB as a plain number or with an ``M`` suffix; GiB with a ``G`` suffix (``2G``, ``1.5GiB``).

    Returns:
        Memory in MiB.

    Raises:
        BadRequest: not a size, or not a whole number of MiB.
    """
    if isinstance(value, int):
        return value
    match = _RAM.fullmatch(value)
    if not match:
        raise BadRequest(messages.VM_BAD_OPTION.format(option="--ram", value=value,
                                                       rule="give MiB (2048, 2048M) or GiB (2G, 1.5GiB)"))
    number, unit = float(match.group(1)), match.group(2).upper()
    mib = number * 1024 if unit == "G" else number
    if mib != int(mib):
        raise BadRequest(messages.VM_BAD_OPTION.format(option="--ram", value=value, rule="not a whole number of MiB"))
    return int(mib)


def parse_network(value: str) -> NetworkRef:
    """``--network``: a libvirt network name (``default``), or ``bridge:BRIDGE`` for a host bridge.

    Raises:
        BadRequest: the name has characters other than letters, digits, ``_ . -``.
    """
    kind, name = ("bridge", value[len("bridge:"):]) if value.startswith("bridge:") else ("network", value)
    if not _NET_NAME.fullmatch(name):
        raise BadRequest(messages.VM_BAD_OPTION.format(
            option="--network", value=value, rule="a libvirt network name or bridge:BRIDGE (letters, digits, _ . -)"))
    return NetworkRef(kind, name)


def make_spec(*, name: str, cpus: int, ram: str | int, osdisk: int, datadisk: int, ssh_key: str,
              image: str = UBUNTU_CLOUD_IMAGE, network: str = DEFAULT_NETWORK, ip: str | None = None,
              gateway: str | None = None, nameservers: Sequence[str] = (), pool_dir: str = DEFAULT_POOL_DIR,
              domain: str = "") -> VMSpec:
    """Check and normalise what the operator asked for.

    Args:
        name: VM name; lowercased, then one RFC 1123 label (RFC 1123 §2.1): it becomes the libvirt
            domain name, the host name and the DNS name ``name.domain``.
        cpus: vCPUs, 1..1024.
        ram: Memory, see :func:`parse_ram`; at least 512 MiB (the cloud image's practical minimum).
        osdisk: OS disk in GiB, at least 1 (and at least the image's virtual size, checked on the
            hypervisor once the image is there).
        datadisk: Data disk in GiB, at least 1.
        ssh_key: An ``ssh-ed25519`` public key line (DESIGN §2: ed25519 everywhere).
        image: Absolute path on the hypervisor or http(s) URL; its file name must be plain.
        network: See :func:`parse_network`.
        ip: Static ``ADDRESS/PREFIX``, or None for DHCP.
        gateway: With ``ip``; default the first host of its network.
        nameservers: With ``ip``; default the gateway.
        pool_dir: Absolute path of letters, digits and ``. _ / + -`` (it appears in virsh
            command lines).
        domain: The cluster's DNS domain, or ``""``.

    Returns:
        The spec.

    Raises:
        BadRequest: a field breaks its rule; the message names the option and the rule.
        ConfigError: ``ssh_key`` is not an ed25519 public key.
    """
    def bad(option: str, value: object, rule: str) -> BadRequest:
        return BadRequest(messages.VM_BAD_OPTION.format(option=option, value=value, rule=rule))

    vm_name = name.lower()
    if not _LABEL.fullmatch(vm_name):
        raise BadRequest(messages.VM_BAD_NAME.format(value=name))
    if not isinstance(cpus, int) or not 1 <= cpus <= 1024:
        raise bad("--cpu", cpus, "a whole number of vCPUs, 1 to 1024")
    ram_mib = parse_ram(ram)
    if ram_mib < 512:
        raise bad("--ram", ram, "at least 512 MiB")
    for option, value in (("--osdisk", osdisk), ("--datadisk", datadisk)):
        if not isinstance(value, int) or not 1 <= value <= 65536:
            raise bad(option, value, "a whole number of GiB, 1 to 65536")
    key = keys.parse_public_key(ssh_key, source="--ssh-key")
    if image.startswith(("https://", "http://")):
        file_name = posixpath.basename(image.split("?", 1)[0])
        if not file_name or not _SAFE_TOKEN.fullmatch(file_name):
            raise bad("--image", image, "the URL must end in a plain file name")
    elif not _SAFE_PATH.fullmatch(image) or "/../" in image + "/":
        raise bad("--image", image, "an absolute path on the hypervisor or an http(s) URL")
    if not _SAFE_PATH.fullmatch(pool_dir) or "/../" in pool_dir + "/":
        raise bad("--pool-dir", pool_dir, "an absolute path of letters, digits and . _ / + -")
    address = gw = None
    dns: tuple[ipaddress.IPv4Address, ...] = ()
    if ip is not None:
        if "/" not in ip:
            raise bad("--ip", ip, "give the prefix length too, e.g. 192.168.122.50/24")
        try:
            address = ipaddress.IPv4Interface(ip)
        except ValueError as e:
            raise bad("--ip", ip, f"not an IPv4 address with a prefix ({e})") from None
        hosts = address.network.num_addresses > 2
        if hosts and address.ip in (address.network.network_address, address.network.broadcast_address):
            raise bad("--ip", ip, "the network or broadcast address of its network")
        try:
            gw = ipaddress.IPv4Address(gateway) if gateway else next(address.network.hosts())
            dns = tuple(ipaddress.IPv4Address(n) for n in nameservers) or (gw,)
        except (ValueError, StopIteration) as e:
            raise bad("--gateway/--nameserver", gateway or ",".join(nameservers), f"not IPv4 addresses ({e})") \
                from None
        if gw not in address.network:
            raise bad("--gateway", str(gw), f"not in the VM's network {address.network}")
    elif gateway or nameservers:
        raise bad("--gateway/--nameserver", gateway or ",".join(nameservers), "only with a static --ip")
    if domain:
        if len(vm_name) + 1 + len(domain) > 253 or not all(_LABEL.fullmatch(x) for x in domain.lower().split(".")):
            raise bad("--domain", domain, "RFC 1123 labels of a-z, 0-9 and '-' separated by dots, at most 253"
                      " characters with the VM name")
    return VMSpec(name=vm_name, cpus=cpus, ram_mib=ram_mib, osdisk_gib=osdisk, datadisk_gib=datadisk,
                  ssh_key=keys.public_key_line(key), image=image, network=parse_network(network), ip=address,
                  gateway=gw, nameservers=dns, pool_dir=posixpath.normpath(pool_dir), domain=domain.lower())


@dataclass(frozen=True)
class VMLayout:
    """Where a VM's files live on the hypervisor (all in the pool directory).

    Attributes:
        image: The cloud image (the URL's file name, or the path given).
        os_disk: ``<name>-os.qcow2``.
        data_disk: ``<name>-data.qcow2``.
        seed_dir: ``<name>-cloudinit/``: the seed's files, kept to rebuild and inspect it.
        seed_iso: ``<name>-seed.iso``: the NoCloud seed (volume label ``cidata``).
    """

    image: str
    os_disk: str
    data_disk: str
    seed_dir: str
    seed_iso: str


def vm_layout(spec: VMSpec) -> VMLayout:
    """The file paths of ``spec`` on the hypervisor."""
    d = spec.pool_dir
    image = posixpath.join(d, posixpath.basename(spec.image.split("?", 1)[0])) if spec.image_is_url else spec.image
    return VMLayout(image=image, os_disk=f"{d}/{spec.name}-os.qcow2", data_disk=f"{d}/{spec.name}-data.qcow2",
                    seed_dir=f"{d}/{spec.name}-cloudinit", seed_iso=f"{d}/{spec.name}-seed.iso")


def spec_metadata(spec: VMSpec) -> dict[str, str]:
    """What the domain records about its spec (attributes of ``<convocate:vm>`` in ``<metadata>``).

    A second run compares these with the new spec to tell "the same VM" from "another VM of that name".
    """
    return {
        "version": "1",
        "cpus": str(spec.cpus),
        "ram-mib": str(spec.ram_mib),
        "osdisk-gib": str(spec.osdisk_gib),
        "datadisk-gib": str(spec.datadisk_gib),
        "image": spec.image,
        "network": str(spec.network),
        "ip": str(spec.ip) if spec.ip else "dhcp",
        "gateway": str(spec.gateway or ""),
        "nameservers": ",".join(str(n) for n in spec.nameservers),
        "pool-dir": spec.pool_dir,
        "ssh-key-sha256": hashlib.sha256(spec.ssh_key.encode()).hexdigest(),
        "domain": spec.domain,
    }


#: Metadata keys that only cloud-init's first boot reads: a difference is told, not refused.
FIRST_BOOT_KEYS = ("ssh-key-sha256", "domain")


def spec_differences(recorded: Mapping[str, str], spec: VMSpec) -> tuple[list[str], list[str]]:
    """How a domain's recorded spec differs from ``spec``.

    Returns:
        ``(differences, first_boot_differences)``: ``"key: recorded -> asked"`` lines; the second
        list holds keys of :data:`FIRST_BOOT_KEYS`, which matter only at the VM's first boot.
    """
    wanted = spec_metadata(spec)
    hard, soft = [], []
    for key, value in wanted.items():
        if key == "version" or recorded.get(key) == value:
            continue
        line = f"{key}: {recorded.get(key, '?')} -> {value}"
        (soft if key in FIRST_BOOT_KEYS else hard).append(line)
    return hard, soft


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


def _num(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


_AXES = (
    ("CPU", "cpus", lambda v: f"{_num(v)} vCPUs"),
    ("RAM", "memory_kib", lambda v: f"{_num(v / KIB)} MiB"),
    ("disk", "disk_bytes", lambda v: f"{_num(v / GIB)} GiB"),
)


def check_admission(capacity: HostCapacity, pledged: Resources, asked: Resources, *, name: str, host: str) -> str:
    """Admit a VM only if pledged + asked stays within 90% of the host on every axis (DESIGN §6).

    The same rule as the agent's admission control for sessions (DESIGN §4), over pledges rather
    than running reservations: a stopped domain can start at any time, so it counts.

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
        allowed = total * ADMISSION_PERCENT / 100
        figures.append(f"{axis} {fmt(held)} pledged + {fmt(ask)} asked of {fmt(allowed)} allowed")
        if (held + ask) * 100 > total * ADMISSION_PERCENT:
            refused.append(messages.VM_ADMISSION_AXIS.format(axis=axis, asked=fmt(ask), pledged=fmt(held),
                                                             allowed=fmt(allowed), total=fmt(total)))
    if refused:
        raise AdmissionDenied(messages.VM_ADMISSION_DENIED.format(name=name, host=host, axes="; ".join(refused)))
    return "admission: " + "; ".join(figures)


# --- parsing what virsh, df, dpkg and qemu-img print ------------------------------------------------------
def _fields(text: str) -> dict[str, str]:
    """``Key:   value`` lines (virsh nodeinfo, dominfo, vol-info, net-info) as a dict."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _size(text: str | None, unit: str | None) -> int:
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
    fields = _fields(text)
    try:
        number, _, unit = fields["Memory size"].partition(" ")
        return int(fields["CPU(s)"]), _size(number, unit or "KiB") // KIB
    except KeyError as e:
        raise ValueError(f"virsh nodeinfo printed no {e}") from None


def parse_meminfo(text: str) -> int:
    """``MemTotal`` of ``/proc/meminfo`` in KiB (proc(5))."""
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1])
    raise ValueError("/proc/meminfo has no MemTotal")


def parse_capacity(text: str) -> int:
    """``Capacity`` of ``virsh vol-info --bytes`` (``123 bytes``) or ``virsh domblkinfo`` (``123``), in bytes."""
    value = _fields(text).get("Capacity", "")
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
            _size(cap.text, cap.get("unit", "bytes")) if cap is not None else 0)


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


def parse_domain_xml(text: str) -> DomainConfig:
    """A domain's XML (formatdomain: ``<vcpu>``, ``<memory unit>``, ``<devices><disk>``, ``<metadata>``).

    Raises:
        ValueError: it is not a domain's XML.
    """
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise ValueError(f"not XML: {e}") from None
    if root.tag != "domain":
        raise ValueError(f"not a domain: <{root.tag}>")
    memory = root.find("memory")
    disks = []
    for disk in root.iterfind("devices/disk"):
        source = disk.find("source")
        src = source.attrib if source is not None else {}
        disks.append(DiskRef(target=disk.find("target").get("dev", "") if disk.find("target") is not None else "",
                             device=disk.get("device", "disk"), path=src.get("file") or src.get("dev"),
                             pool=src.get("pool"), volume=src.get("volume")))
    ours = root.find(f"metadata/{{{METADATA_NS}}}vm")
    return DomainConfig(name=root.findtext("name", ""), vcpus=int(root.findtext("vcpu", "0").strip() or 0),
                        memory_kib=_size(memory.text.strip(), memory.get("unit", "KiB")) // KIB
                        if memory is not None and memory.text else 0,
                        disks=tuple(disks), recorded=dict(ours.attrib) if ours is not None else None)


# --- the domain XML --------------------------------------------------------------------------------------
def domain_xml(spec: VMSpec) -> str:
    """The libvirt domain of ``spec`` (https://libvirt.org/formatdomain.html), as text.

    A KVM guest (``<domain type='kvm'>``, x86_64, host-passthrough CPU) with ``spec.cpus`` vCPUs
    and ``spec.ram_mib`` MiB; two virtio disks, ``vda`` (the OS disk, qcow2) and ``vdb`` (the
    data disk, qcow2), both with ``discard='unmap'`` so freed blocks return to the host; a
    read-only SATA CD-ROM with the NoCloud seed (SATA works on both the i440fx and q35 machine
    types); a virtio NIC with the spec's MAC on the libvirt network or host bridge; a serial
    port and console on a pty (``virsh console NAME``; Ubuntu cloud images log to ttyS0); a
    virtio RNG fed from the host's /dev/urandom, so first-boot key generation does not stall;
    and the spec in ``<metadata>``. The machine type is left to libvirt's default.
    ElementTree escapes every text and attribute.
    """
    layout = vm_layout(spec)
    dom = ET.Element("domain", {"type": "kvm"})
    ET.SubElement(dom, "name").text = spec.name
    ET.SubElement(dom, "title").text = f"convocate VM {spec.name}"
    ET.SubElement(ET.SubElement(dom, "metadata"), f"{{{METADATA_NS}}}vm", spec_metadata(spec))
    ET.SubElement(dom, "memory", {"unit": "MiB"}).text = str(spec.ram_mib)
    ET.SubElement(dom, "currentMemory", {"unit": "MiB"}).text = str(spec.ram_mib)
    ET.SubElement(dom, "vcpu", {"placement": "static"}).text = str(spec.cpus)
    os_ = ET.SubElement(dom, "os")
    ET.SubElement(os_, "type", {"arch": "x86_64"}).text = "hvm"
    ET.SubElement(os_, "boot", {"dev": "hd"})
    features = ET.SubElement(dom, "features")
    ET.SubElement(features, "acpi")
    ET.SubElement(features, "apic")
    ET.SubElement(dom, "cpu", {"mode": "host-passthrough"})
    ET.SubElement(dom, "clock", {"offset": "utc"})
    for event, action in (("on_poweroff", "destroy"), ("on_reboot", "restart"), ("on_crash", "destroy")):
        ET.SubElement(dom, event).text = action
    devices = ET.SubElement(dom, "devices")
    for path, dev in ((layout.os_disk, "vda"), (layout.data_disk, "vdb")):
        disk = ET.SubElement(devices, "disk", {"type": "file", "device": "disk"})
        ET.SubElement(disk, "driver", {"name": "qemu", "type": "qcow2", "discard": "unmap"})
        ET.SubElement(disk, "source", {"file": path})
        ET.SubElement(disk, "target", {"dev": dev, "bus": "virtio"})
    cdrom = ET.SubElement(devices, "disk", {"type": "file", "device": "cdrom"})
    ET.SubElement(cdrom, "driver", {"name": "qemu", "type": "raw"})
    ET.SubElement(cdrom, "source", {"file": layout.seed_iso})
    ET.SubElement(cdrom, "target", {"dev": "sda", "bus": "sata"})
    ET.SubElement(cdrom, "readonly")
    nic = ET.SubElement(devices, "interface", {"type": spec.network.kind})
    ET.SubElement(nic, "mac", {"address": spec.mac})
    ET.SubElement(nic, "source", {spec.network.kind: spec.network.name})
    ET.SubElement(nic, "model", {"type": "virtio"})
    ET.SubElement(ET.SubElement(devices, "serial", {"type": "pty"}), "target", {"port": "0"})
    ET.SubElement(ET.SubElement(devices, "console", {"type": "pty"}), "target", {"type": "serial", "port": "0"})
    ET.SubElement(ET.SubElement(devices, "rng", {"model": "virtio"}), "backend", {"model": "random"}).text = \
        "/dev/urandom"
    ET.indent(dom)
    return ET.tostring(dom, encoding="unicode") + "\n"


# --- the cloud-init NoCloud seed -------------------------------------------------------------------------
#: Runs once from runcmd on the first boot: puts /var on the data disk, then asks for one reboot.
MOVE_VAR_SCRIPT = f"""\
#!/bin/sh
# convocate-move-var (written by convocate-host create-vm): move /var onto the data disk.
# cloud-init's fs_setup made an ext4 filesystem labelled {DATA_LABEL} on /dev/vdb. This copies the
# live /var onto it once, adds it to /etc/fstab, and leaves a marker in /run so power_state reboots
# the VM once: from then on /var is mounted from the data disk before any service starts.
set -eu
label={DATA_LABEL}
if grep -q "^LABEL=$label[[:space:]]" /etc/fstab; then
    exit 0
fi
udevadm settle || true
dev=/dev/disk/by-label/$label
if [ ! -b "$dev" ]; then
    echo "convocate-move-var: no filesystem labelled $label: fs_setup did not format /dev/vdb" >&2
    exit 1
fi
mnt=$(mktemp -d)
trap 'umount "$mnt" 2>/dev/null || true; rmdir "$mnt"' EXIT
mount "$dev" "$mnt"
if [ -z "$(ls -A "$mnt" | grep -v '^lost+found$' || true)" ]; then
    journalctl --relinquish-var 2>/dev/null || true
    cp -ax /var/. "$mnt"/
fi
umount "$mnt"
echo "LABEL=$label /var ext4 defaults 0 2" >> /etc/fstab
touch /run/convocate-move-var.reboot
"""

_USER_DATA_HEADER = """\
#cloud-config
# Written by convocate-host create-vm for VM {name}. cloud-config is YAML; the body below is JSON,
# which YAML reads as it is, so every string is quoted and escaped exactly.
#
# The data disk /dev/vdb holds /var. fs_setup formats it (ext4, label {label}, no partition table,
# never over an existing filesystem). It is deliberately NOT listed under `mounts`: cc_mounts runs
# `mount -a` at once, and an empty filesystem mounted over the live /var mid-boot would hide dpkg's
# database, the journal and cloud-init's own state in /var/lib/cloud. Instead runcmd (the last
# stage, once the system is up) runs convocate-move-var: it copies /var onto the new filesystem,
# adds it to /etc/fstab and asks power_state for one reboot, after which systemd mounts /var from
# vdb before any service starts. Writes to /var between the copy and that reboot (the tail of the
# first boot's logs) stay behind on the OS disk, hidden under the mount. The script does nothing
# once the fstab line is there, so the second boot neither copies nor reboots again.
"""


def meta_data(spec: VMSpec) -> str:
    """NoCloud ``meta-data``: ``instance-id`` (changes with the spec) and ``local-hostname``."""
    digest = hashlib.sha256(json.dumps(spec_metadata(spec), sort_keys=True).encode()).hexdigest()[:12]
    return json.dumps({"instance-id": f"convocate-{spec.name}-{digest}", "local-hostname": spec.name}, indent=2) + "\n"


def user_data(spec: VMSpec) -> str:
    """NoCloud ``user-data``: the ``#cloud-config`` of the VM's first boot.

    The image's default user (``ubuntu``) gets ``spec.ssh_key``; password logins are off. The
    data disk gets its filesystem from ``fs_setup`` and becomes /var through
    :data:`MOVE_VAR_SCRIPT` (``write_files`` + ``runcmd`` + ``power_state``); the header comment
    says why ``mounts`` is not used.
    """
    config: dict[str, object] = {"hostname": spec.name}
    if spec.domain:
        config["fqdn"] = f"{spec.name}.{spec.domain}"
    config.update({
        "ssh_pwauth": False,
        "ssh_authorized_keys": [spec.ssh_key],
        "fs_setup": [{"label": DATA_LABEL, "filesystem": "ext4", "device": "/dev/vdb", "partition": "none",
                      "overwrite": False}],
        "write_files": [{"path": "/usr/local/sbin/convocate-move-var", "owner": "root:root", "permissions": "0755",
                         "content": MOVE_VAR_SCRIPT}],
        "runcmd": [["/usr/local/sbin/convocate-move-var"]],
        "power_state": {"mode": "reboot", "timeout": 120, "condition": "test -e /run/convocate-move-var.reboot",
                        "message": "convocate: rebooting once to mount /var from the data disk"},
    })
    return _USER_DATA_HEADER.format(name=spec.name, label=DATA_LABEL) + json.dumps(config, indent=2) + "\n"


def network_config(spec: VMSpec) -> str | None:
    """NoCloud ``network-config`` (network config version 2) for a static address; None for DHCP.

    The NIC is matched by the MAC in the domain XML, so the guest's interface name does not matter.
    """
    if spec.ip is None:
        return None
    nameservers: dict[str, list[str]] = {"addresses": [str(n) for n in spec.nameservers]}
    if spec.domain:
        nameservers["search"] = [spec.domain]
    nic = {
        "match": {"macaddress": spec.mac},
        "addresses": [str(spec.ip)],
        "routes": [{"to": "default", "via": str(spec.gateway)}],
        "nameservers": nameservers,
    }
    return json.dumps({"version": 2, "ethernets": {"primary": nic}}, indent=2) + "\n"


def seed_files(spec: VMSpec) -> dict[str, bytes]:
    """The seed ISO's files by name: ``meta-data``, ``user-data`` and, when static, ``network-config``."""
    files = {"meta-data": meta_data(spec), "user-data": user_data(spec)}
    net = network_config(spec)
    if net is not None:
        files["network-config"] = net
    return {name: text.encode() for name, text in files.items()}


# --- the DNS record on the shell host ----------------------------------------------------------------------
def vm_record(name: str, ip: str, domain: str) -> str:
    """The hosts-file line of a VM: ``<ip> <name>.<domain> <name> # convocate-vm <name>``."""
    names = f"{name}.{domain} {name}" if domain else name
    return f"{ip} {names} {DNS_MARKER} {name}"


def render_vm_record(current: str, name: str, ip: str, domain: str, *, host: str = "shell host",
                     path: str = "the hosts file") -> str:
    """The hosts file with the VM's record in it, every other line kept byte for byte.

    The record replaces an earlier one of the same VM in place; a new one goes after the last VM
    record, or else after the file's leading comments, so it stays among the lines status-serve
    does not own (it puts those first and its own block after them, DESIGN §5).

    Args:
        current: The file's content (``""`` if missing).
        name: The VM name.
        ip: Its address.
        domain: The cluster domain (``""`` for none).
        host: The shell host, for the message.
        path: The file, for the message.

    Returns:
        The new content.

    Raises:
        Conflict: another line (a session's, or one added by hand) already names the VM.
    """
    line = vm_record(name, ip, domain)
    lines = current.splitlines()
    ours = f"{DNS_MARKER} {name}"
    wanted = {name, f"{name}.{domain}"} if domain else {name}
    index = None
    for i, existing in enumerate(lines):
        if existing.rstrip().endswith(ours):
            index = i
            continue
        fields = existing.split("#", 1)[0].split()
        if len(fields) > 1 and wanted & {f.lower() for f in fields[1:]}:
            raise Conflict(messages.VM_DNS_NAME_TAKEN.format(host=host, path=path, name=name, line=existing))
    if index is not None:
        lines[index] = line
    else:
        vm_lines = [i for i, existing in enumerate(lines) if DNS_MARKER + " " in existing]
        at = vm_lines[-1] + 1 if vm_lines else 0
        if not vm_lines:
            while at < len(lines) and (not lines[at].strip() or lines[at].lstrip().startswith("#")):
                at += 1
        lines.insert(at, line)
    return "\n".join(lines) + "\n"


# --- the executor ----------------------------------------------------------------------------------------
class Virsh:
    """virsh(1) on a target, talking to one libvirt URI, in the C locale (its output is parsed).

    Args:
        target: Where virsh runs (as root).
        uri: The libvirt connection URI (``qemu:///system``; ``test:///default`` or
            ``test:///abs/node.xml`` for libvirt's test driver).
    """

    def __init__(self, target: Target, uri: str = DEFAULT_URI) -> None:
        self.target = target
        self.uri = uri

    def argv(self, *args: str) -> list[str]:
        return [*_VIRSH_ENV, "virsh", "-c", self.uri, *args]

    async def run(self, *args: str, check: bool = True, what: str | None = None,
                  input: bytes | None = None, reads: bool = False) -> CommandResult:
        """One virsh command (the arguments are passed as they are, never parsed by a shell).

        Args:
            args: The virsh command and its arguments.
            check: Raise when it fails.
            what: What it is for, for the error message.
            input: Bytes for its stdin.
            reads: The caller's word that the command only reads (:meth:`Target.run`); a dry run
                runs only those.
        """
        return await self.target.run(self.argv(*args), check=check, input=input, what=what or f"virsh {args[0]}",
                                     reads=reads)

    async def session(self, commands: Sequence[Sequence[str]], *, what: str, input: bytes | None = None) -> str:
        """Several virsh commands in one connection (``virsh 'cmd1 ; cmd2'``); returns their stdout.

        One connection matters for the test driver, whose state lives only as long as the
        connection, and is one SSH round trip instead of several on a real host. virsh goes on
        after a failed command and its exit status is the last command's, so any ``error:``
        line on stderr counts as a failure.

        Raises:
            HostError: a command failed.
            ValueError: an argument is not a plain token (callers pass validated names and paths).
        """
        for command in commands:
            for token in command:
                if not _SAFE_TOKEN.fullmatch(token):
                    raise ValueError(f"not a plain virsh argument: {token!r}")
        line = " ; ".join(" ".join(command) for command in commands)
        result = await self.target.run(self.argv(line), check=False, input=input, what=what)
        errors = [e for e in result.stderr.decode("utf-8", "replace").splitlines() if e.startswith("error:")]
        if not result.ok or errors:
            raise HostError(messages.HOST_COMMAND_FAILED.format(
                host=self.target.description, what=what, command=shlex.join(self.argv(line)),
                status=result.returncode, detail="\n".join(errors) or result.detail()))
        return result.text


_DF_SCRIPT = 'd=$1; while [ ! -e "$d" ]; do d=$(dirname -- "$d"); done; exec df -P -B1 -- "$d"'


async def probe_hypervisor(target: Target, virsh: Virsh, pool_dir: str = DEFAULT_POOL_DIR) -> Hypervisor:
    """Read the host's capacity and every domain's pledge; changes nothing.

    CPU and memory come from ``virsh nodeinfo``. The disk capacity is that of the active storage
    pool whose target path is ``pool_dir``, else ``df`` of ``pool_dir`` (or its nearest existing
    parent). Pledges are read from each domain's persistent XML; each disk's virtual size from
    ``virsh vol-info --bytes`` (a disk in a storage pool), else ``virsh domblkinfo``. A host with
    no libvirt yet (a ``qemu://`` URI that does not answer and no libvirtd/virtqemud installed)
    has no domains; its CPUs and memory come from ``nproc`` and ``/proc/meminfo``.

    Raises:
        HypervisorError: libvirt is installed but does not answer, or the URI is not a qemu one.
        HostError: a command failed, or printed what cannot be read.
    """
    try:
        return await _probe(target, virsh, pool_dir)
    except ValueError as e:
        raise HostError(messages.VM_BAD_OUTPUT.format(host=target.description, what="virsh or df", detail=e)) \
            from e


async def _probe(target: Target, virsh: Virsh, pool_dir: str) -> Hypervisor:
    notes: list[str] = []
    node = await virsh.run("nodeinfo", check=False, reads=True)
    if node.ok:
        cpus, memory_kib = parse_nodeinfo(node.text)
        libvirt, source = True, "virsh nodeinfo"
    elif virsh.uri.startswith("qemu") and not (await target.sh(
            '[ -x /usr/sbin/libvirtd ] || [ -x /usr/sbin/virtqemud ]', check=False, reads=True)).ok:
        out = (await target.sh("nproc; cat /proc/meminfo", what="reading the host's CPUs and memory",
                               reads=True)).text
        cpus, memory_kib = int(out.split()[0]), parse_meminfo(out)
        libvirt, source = False, "nproc and /proc/meminfo (no libvirt yet)"
    else:
        raise HypervisorError(messages.VM_LIBVIRT_UNREACHABLE.format(host=target.description, uri=virsh.uri,
                                                                     detail=node.detail()))
    disk_bytes = 0
    disk_source = ""
    if libvirt:
        pools = await virsh.run("pool-list", "--all", "--name", what="listing storage pools", reads=True)
        for pool in filter(None, (p.strip() for p in pools.text.splitlines())):
            xml = await virsh.run("pool-dumpxml", pool, check=False, reads=True)
            if xml.ok:
                name, path, capacity = parse_pool_xml(xml.text)
                if path == posixpath.normpath(pool_dir) and capacity > 0:
                    disk_bytes, disk_source = capacity, f"storage pool {name} ({path})"
                    break
    if not disk_source:
        df = await target.sh(_DF_SCRIPT, pool_dir, what=f"measuring the filesystem of {pool_dir}", reads=True)
        disk_bytes, disk_source = parse_df(df.text), f"filesystem of {pool_dir} (df)"
    domains: list[DomainConfig] = []
    sizes: dict[str, int] = {}
    if libvirt:
        listing = await virsh.run("list", "--all", "--name", what="listing libvirt domains", reads=True)
        for name in filter(None, (n.strip() for n in listing.text.splitlines())):
            config = parse_domain_xml((await virsh.run("dumpxml", "--inactive", name,
                                                       what=f"reading domain {name}", reads=True)).text)
            domains.append(config)
            for disk in config.disks:
                if disk.device != "disk" or disk.key in sizes:
                    continue
                size = await _disk_size(virsh, config.name, disk)
                if size is None:
                    notes.append(f"disk {disk.target} of domain {config.name} ({disk.key}) could not be measured;"
                                 " it counts as 0 GiB")
                else:
                    sizes[disk.key] = size
    return Hypervisor(HostCapacity(Resources(cpus, memory_kib, disk_bytes), source, disk_source), tuple(domains),
                      sizes, libvirt, tuple(notes))


async def _disk_size(virsh: Virsh, domain: str, disk: DiskRef) -> int | None:
    """A disk's virtual capacity in bytes, or None when neither vol-info nor domblkinfo knows it."""
    attempts = []
    if disk.pool and disk.volume:
        attempts.append(("vol-info", "--bytes", "--pool", disk.pool, disk.volume))
    elif disk.path:
        attempts.append(("vol-info", "--bytes", disk.path))
    if disk.target:
        attempts.append(("domblkinfo", domain, disk.target))
    for args in attempts:
        result = await virsh.run(*args, check=False, reads=True)
        if result.ok:
            try:
                return parse_capacity(result.text)
            except ValueError:
                continue
    return None


async def install_kvm_stack(target: Target, report: StepReport) -> bool:
    """Install what is missing of :data:`KVM_PACKAGES` with apt-get; True when it installed something.

    Raises:
        HypervisorError: packages are missing and the host has no apt-get.
        HostError: apt-get failed.
    """
    query = await target.run(["dpkg-query", "-W", "-f", "${Package} ${db:Status-Status}\n", *KVM_PACKAGES],
                             check=False, reads=True)
    missing = [p for p in KVM_PACKAGES if p not in parse_dpkg_installed(query.text)]
    if not missing:
        report.kept("KVM/libvirt stack present (" + ", ".join(KVM_PACKAGES) + ")")
        return False
    if not await target.exists("/usr/bin/apt-get"):
        raise HypervisorError(messages.VM_NO_APT.format(host=target.description, packages=" ".join(missing)))
    await target.run([*APT_ENV, "apt-get", "update", "-q"], what="apt-get update")
    await target.run([*APT_ENV, "apt-get", "install", "-y", "-q", "--no-install-recommends",
                      "-o", "Dpkg::Options::=--force-confold", *missing], what="installing the KVM/libvirt stack")
    report.changed("KVM/libvirt stack installed: " + ", ".join(missing))
    return True


async def _wait_for_libvirt(virsh: Virsh, timeout_s: float = 30.0) -> bool:
    """Wait until libvirt answers (its daemon starts from the package's postinst, or by socket activation).

    Returns:
        True once it answers; False from a dry run when it does not (the start of libvirtd that
        would follow is recorded, and nothing is waited for).

    Raises:
        HypervisorError: it did not answer within ``timeout_s`` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        result = await virsh.run("nodeinfo", check=False, reads=True)
        if result.ok:
            return True
        if virsh.target.dry_run:
            await virsh.target.run(["systemctl", "start", "libvirtd"], check=False)
            return False
        if loop.time() >= deadline:
            raise HypervisorError(messages.VM_LIBVIRT_UNREACHABLE.format(host=virsh.target.description, uri=virsh.uri,
                                                                         detail=result.detail()))
        await virsh.target.run(["systemctl", "start", "libvirtd"], check=False)
        await asyncio.sleep(2)


async def ensure_network(virsh: Virsh, network: NetworkRef, report: StepReport) -> None:
    """The VM's network is there and active: a libvirt network is started (and marked autostart) if it is not.

    Raises:
        HypervisorError: no such libvirt network, or no such bridge.
    """
    target = virsh.target
    if network.kind == "bridge":
        if not (await target.sh('[ -d "/sys/class/net/$1/bridge" ]', network.name, check=False, reads=True)).ok:
            raise HypervisorError(messages.VM_NO_BRIDGE.format(host=target.description, bridge=network.name))
        report.kept(f"bridge {network.name} present")
        return
    info = await virsh.run("net-info", network.name, check=False, reads=True)
    if not info.ok:
        raise HypervisorError(messages.VM_NO_NETWORK.format(host=target.description, network=network.name))
    fields = _fields(info.text)
    if fields.get("Active") == "yes":
        report.kept(f"libvirt network {network.name} active")
        if fields.get("Autostart") != "yes":
            report.note(f"libvirt network {network.name} does not autostart: VMs on it lose their network after a"
                        f" host reboot until `virsh net-start {network.name}` (virsh net-autostart {network.name})")
        return
    await virsh.session([["net-start", network.name], ["net-autostart", network.name]],
                        what=f"starting libvirt network {network.name}")
    report.changed(f"libvirt network {network.name} started and marked autostart")


_DOWNLOAD_SCRIPT = """\
set -eu
url=$1 dest=$2
file=${url##*/}; file=${file%%\\?*}
tmp=$(mktemp "$dest.part.XXXXXX")
trap 'rm -f -- "$tmp"' EXIT
curl -fsSL --retry 3 -o "$tmp" "$url"
if sums=$(curl -fsSL --retry 3 "${url%/*}/SHA256SUMS" 2>/dev/null); then
    want=$(printf '%s\\n' "$sums" | awk -v f="$file" '$2 == f || $2 == "*" f { print $1; exit }')
    [ -n "$want" ] || { echo "SHA256SUMS beside $url lists no $file" >&2; exit 4; }
    got=$(sha256sum < "$tmp" | cut -d' ' -f1)
    [ "$got" = "$want" ] || { echo "$file has SHA-256 $got, SHA256SUMS says $want" >&2; exit 5; }
    echo verified
fi
chmod 0644 "$tmp"
mv -f -- "$tmp" "$dest"
trap - EXIT
"""

_OS_DISK_SCRIPT = """\
set -eu
src=$1 fmt=$2 dest=$3 size=$4
tmp="$dest.part"
trap 'rm -f -- "$tmp"' EXIT
qemu-img convert -q -f "$fmt" -O qcow2 "$src" "$tmp"
qemu-img resize -q -f qcow2 "$tmp" "$size"
chmod 0600 "$tmp"
mv -f -- "$tmp" "$dest"
trap - EXIT
"""

_DATA_DISK_SCRIPT = """\
set -eu
dest=$1 size=$2
tmp="$dest.part"
trap 'rm -f -- "$tmp"' EXIT
qemu-img create -q -f qcow2 "$tmp" "$size"
chmod 0600 "$tmp"
mv -f -- "$tmp" "$dest"
trap - EXIT
"""

_ISO_SCRIPT = """\
set -eu
dest=$1 dir=$2
shift 2
tmp="$dest.part"
trap 'rm -f -- "$tmp"' EXIT
cd "$dir"
genisoimage -quiet -output "$tmp" -volid cidata -joliet -rock "$@"
chmod 0644 "$tmp"
mv -f -- "$tmp" "$dest"
trap - EXIT
"""


async def _image_info(target: Target, path: str) -> tuple[str, int] | None:
    """``(format, virtual size)`` of an image file, or None when it does not exist."""
    if not await target.exists(path):
        return None
    result = await target.run(["qemu-img", "info", "--output=json", "-U", path], what=f"inspecting {path}",
                              reads=True)
    try:
        return parse_image_info(result.text)
    except (ValueError, KeyError) as e:
        raise HostError(messages.VM_BAD_OUTPUT.format(host=target.description, what=f"qemu-img info {path}",
                                                      detail=e)) from e


async def ensure_image(target: Target, spec: VMSpec, report: StepReport) -> tuple[str, int] | None:
    """The cloud image on the hypervisor; a URL is downloaded once into the pool directory.

    A download lands under a temporary name and is renamed only when complete and, when the
    server publishes ``SHA256SUMS`` beside the image (cloud-images.ubuntu.com does), only when
    its SHA-256 matches. An image already there is used as it is.

    Returns:
        ``(format, virtual size in bytes)`` of the image; None from a dry run that would download
        it (there is no image to read them from).

    Raises:
        BadRequest: the image path does not exist on the hypervisor.
        HostError: the download or its check failed.
    """
    path = vm_layout(spec).image
    info = await _image_info(target, path)
    if info is None and not spec.image_is_url:
        raise BadRequest(messages.VM_BAD_OPTION.format(option="--image", value=spec.image,
                                                       rule=f"no such file on {target.description}"))
    if info is None:
        result = await target.sh(_DOWNLOAD_SCRIPT, spec.image, path, what=f"downloading {spec.image}",
                                 timeout=3600.0)
        if target.dry_run:
            report.changed(f"cloud image {path} downloaded from {spec.image} (checked against the SHA256SUMS"
                           " beside it, if the server publishes one)")
            return None
        checked = "SHA-256 checked against SHA256SUMS" if "verified" in result.text else "no SHA256SUMS to check"
        report.changed(f"cloud image {path} downloaded from {spec.image} ({checked})")
        info = await _image_info(target, path)
        assert info is not None
    else:
        report.kept(f"cloud image {path} present")
    return info


async def _ensure_disk(target: Target, spec: VMSpec, path: str, gib: int, create: list[str], what: str,
                       report: StepReport) -> None:
    info = await _image_info(target, path)
    if info is not None:
        if info[1] != gib * GIB:
            raise Conflict(messages.VM_DISK_EXISTS.format(host=target.description, path=path, name=spec.name,
                                                          actual=f"{_num(info[1] / GIB)} GiB", wanted=f"{gib} GiB"))
        report.kept(f"{what} {path} ({gib} GiB) present")
        return
    await target.sh(*create, what=f"creating the {what} {path}")
    report.changed(f"{what} {path} created ({gib} GiB qcow2)")


async def ensure_seed(target: Target, spec: VMSpec, report: StepReport) -> None:
    """The seed's files in the seed directory and the ISO built from them (genisoimage, volume id ``cidata``).

    The NoCloud datasource reads ``meta-data``, ``user-data`` and ``network-config`` from an
    iso9660 or vfat filesystem labelled ``cidata`` (cloud-init docs, NoCloud). The ISO is rebuilt
    only when a file changed or it is missing, so a second run keeps it.
    """
    layout = vm_layout(spec)
    changed = await target.ensure_dir(layout.seed_dir, mode=0o700)
    files = seed_files(spec)
    for name, data in files.items():
        changed |= await target.write_file(f"{layout.seed_dir}/{name}", data, mode=0o600)
    if "network-config" not in files and await target.exists(f"{layout.seed_dir}/network-config"):
        await target.run(["rm", "-f", "--", f"{layout.seed_dir}/network-config"])
        changed = True
    if changed or not await target.exists(layout.seed_iso):
        await target.sh(_ISO_SCRIPT, layout.seed_iso, layout.seed_dir, *sorted(files),
                        what=f"building the seed ISO {layout.seed_iso}")
        report.changed(f"cloud-init seed {layout.seed_iso} built ({', '.join(sorted(files))})")
    else:
        report.kept(f"cloud-init seed {layout.seed_iso} up to date")


async def vm_address(virsh: Virsh, spec: VMSpec, *, timeout_s: float = IP_WAIT_S,
                     interval_s: float = IP_POLL_S) -> tuple[str | None, str]:
    """The VM's IPv4 address and where it came from.

    A static address is the spec's. Otherwise the NIC's address is asked of libvirt with
    ``virsh domifaddr --source lease`` (the libvirt network's DHCP leases) or ``--source arp``
    (the host's ARP table, for a bridge), every ``interval_s`` until ``timeout_s``.

    Returns:
        ``(address or None, source)``; source is ``static``, ``DHCP lease`` or ``ARP table``.
    """
    if spec.ip is not None:
        return str(spec.ip.ip), "static"
    source, label = ("lease", "DHCP lease") if spec.network.kind == "network" else ("arp", "ARP table")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        result = await virsh.run("domifaddr", spec.name, "--source", source, check=False, reads=True)
        try:
            found = parse_domifaddr(result.text, spec.mac) if result.ok else []
        except ValueError:
            found = []
        if found:
            return str(found[0]), label
        if loop.time() + interval_s > deadline:
            return None, label
        await asyncio.sleep(interval_s)


@contextlib.asynccontextmanager
async def hypervisor_lock(target: Target, path: str = LOCK_PATH, *,
                          wait_s: float = LOCK_WAIT_S) -> AsyncIterator[None]:
    """Hold an exclusive flock(1) on ``path`` on the hypervisor for the ``async with`` block.

    ``flock -w`` runs a shell that says ``locked`` and then waits on its stdin; closing stdin (or
    losing the connection, or this process dying) ends it and releases the lock, so a crashed
    run never leaves the hypervisor locked.

    A dry run takes no lock: flock(1) creates the lock file, and a dry run only reads, so another
    run's lock does not hold it up either. The lock a real run would take is recorded.

    Raises:
        HostError: another holder kept the lock for ``wait_s`` seconds, or flock failed.
    """
    proc = await target.open_process(["flock", "-w", f"{wait_s:g}", path, "sh", "-c", "echo locked; exec cat"])
    if target.dry_run:
        yield
        return
    first = b""
    while not first.endswith(b"\n"):
        chunk = await proc.read(64)
        if not chunk:
            break
        first += chunk
    if first != b"locked\n":
        result = await proc.wait()
        if result.returncode == 1 and not result.stderr:
            raise HostError(messages.VM_LOCK_BUSY.format(host=target.description, path=path, seconds=wait_s))
        raise HostError(messages.HOST_COMMAND_FAILED.format(host=target.description, what=f"locking {path}",
                                                            command=f"flock -w {wait_s:g} {path}",
                                                            status=result.returncode, detail=result.detail()))
    try:
        yield
    finally:
        with contextlib.suppress(OSError, HostError):
            await proc.close_stdin()
            await proc.wait()


@dataclass(frozen=True)
class VMResult:
    """What :func:`create_vm` left behind.

    Attributes:
        name: The domain name.
        ip: Its IPv4 address, or None when DHCP gave none in time.
        ip_source: ``static``, ``DHCP lease`` or ``ARP table``.
        created: The domain was defined by this run (by a dry run: would be).
        report: Every step.
        stopped: A dry run stopped before the domain (a note in the report says where and why);
            ``ip`` is None then.
    """

    name: str
    ip: str | None
    ip_source: str
    created: bool
    report: StepReport
    stopped: bool = False


async def create_vm(target: Target, spec: VMSpec, *, uri: str = DEFAULT_URI, install_stack: bool = True,
                    report: StepReport | None = None, ip_timeout_s: float = IP_WAIT_S,
                    lock_path: str | None = None, lock_wait_s: float = LOCK_WAIT_S) -> VMResult:
    """Make ``target`` a KVM hypervisor running the VM of ``spec`` (the module docstring lists the steps).

    Args:
        target: The hypervisor.
        spec: The VM.
        uri: libvirt connection URI every virsh command uses.
        install_stack: Install the missing KVM/libvirt packages (off: they must be there).
        report: Where steps are recorded (a new :class:`StepReport` if None).
        ip_timeout_s: How long to wait for a DHCP lease, in seconds (0: ask once).
        lock_path: The lock file on the hypervisor (:func:`hypervisor_lock`) held from the
            admission check until the domain is defined; None for :data:`LOCK_PATH`.
        lock_wait_s: How long to wait for another create-vm to release it, in seconds.

    On a :class:`~convocate_host.target.DryRunTarget` every read runs and every change is only
    recorded; the run stops with a note where a later step needs what a change it did not make
    would have left (the KVM/libvirt packages, a running libvirt, the downloaded cloud image),
    and does not wait for a DHCP lease of a VM it did not start.

    Returns:
        The VM's name, address and the report.

    Raises:
        AdmissionDenied: the VM does not fit within 90% of the host; nothing was changed.
        Conflict: a domain of that name exists with another spec (or was not made by create-vm),
            or a disk file of the VM exists with another size.
        HypervisorError: no KVM, no libvirt after installing, no such network or bridge, no apt-get.
        BadRequest: the image is missing, or larger than ``--osdisk``.
        HostError: a command on the hypervisor failed, or another create-vm held the lock too long.
    """
    report = report if report is not None else StepReport()
    virsh = Virsh(target, uri)
    async with hypervisor_lock(target, lock_path or LOCK_PATH, wait_s=lock_wait_s):
        created = await _create_locked(target, virsh, spec, install_stack, report)
    if created is None:
        return VMResult(spec.name, None, "dry run", False, report, stopped=True)
    if target.dry_run and created and spec.ip is None:  # no VM was started: no lease to wait for
        report.note(messages.VM_DRY_RUN_NO_LEASE.format(name=spec.name, seconds=ip_timeout_s))
        return VMResult(spec.name, None, "DHCP lease", created, report)
    ip, source = await vm_address(virsh, spec, timeout_s=0 if target.dry_run else ip_timeout_s)
    return VMResult(spec.name, ip, source, created, report)


async def _create_locked(target: Target, virsh: Virsh, spec: VMSpec, install_stack: bool,
                         report: StepReport) -> bool | None:
    """The steps of :func:`create_vm` under the hypervisor lock.

    Returns:
        True when the domain was defined now, False when it was kept; None when a dry run
        stopped before the domain (the note says why).
    """
    uri = virsh.uri
    host = await probe_hypervisor(target, virsh, spec.pool_dir)
    for note in host.notes:
        report.note(note)
    existing = host.domain(spec.name)
    if existing is not None:
        await _keep_existing(virsh, spec, existing, report)
        return False

    report.kept(check_admission(host.capacity, host.pledged, spec.asked, name=spec.name, host=target.description)
                + f" ({host.capacity.source}; {host.capacity.disk_source})")
    if install_stack:
        if await install_kvm_stack(target, report) and target.dry_run:
            report.note(messages.VM_DRY_RUN_STOPS_AT_STACK)
            return None
    else:
        report.note("KVM/libvirt packages not checked (--no-install)")
    if not await _wait_for_libvirt(virsh):
        report.note(messages.VM_DRY_RUN_STOPS_AT_LIBVIRT.format(uri=uri))
        return None
    if uri.startswith("qemu") and not (await target.sh("[ -c /dev/kvm ]", check=False, reads=True)).ok:
        raise HypervisorError(messages.VM_NO_KVM.format(host=target.description))
    await ensure_network(virsh, spec.network, report)
    layout = vm_layout(spec)
    if not await target.exists(spec.pool_dir):
        await target.ensure_dir(spec.pool_dir, mode=0o711)
        report.changed(f"pool directory {spec.pool_dir} created")
    image = await ensure_image(target, spec, report)
    if image is None:
        report.note(messages.VM_DRY_RUN_STOPS_AT_IMAGE.format(image=layout.image))
        return None
    image_format, image_size = image
    if image_size > spec.osdisk_gib * GIB:
        raise BadRequest(messages.VM_OSDISK_TOO_SMALL.format(
            wanted=spec.osdisk_gib, image=layout.image, actual=f"{_num(image_size / GIB)} GiB",
            minimum=f"{-(-image_size // GIB)} GiB"))
    await _ensure_disk(target, spec, layout.os_disk, spec.osdisk_gib,
                       [_OS_DISK_SCRIPT, layout.image, image_format, layout.os_disk, f"{spec.osdisk_gib}G"],
                       "OS disk", report)
    await _ensure_disk(target, spec, layout.data_disk, spec.datadisk_gib,
                       [_DATA_DISK_SCRIPT, layout.data_disk, f"{spec.datadisk_gib}G"], "data disk", report)
    await ensure_seed(target, spec, report)
    await virsh.session([["define", "/dev/stdin"], ["start", spec.name], ["autostart", spec.name]],
                        input=domain_xml(spec).encode(), what=f"defining and starting domain {spec.name}")
    report.changed(f"domain {spec.name} defined, started and marked autostart ({spec.cpus} vCPUs, {spec.ram_mib} MiB,"
                   f" vda {spec.osdisk_gib} GiB, vdb {spec.datadisk_gib} GiB at /var, NIC on {spec.network})")
    return True


async def _keep_existing(virsh: Virsh, spec: VMSpec, existing: DomainConfig, report: StepReport) -> None:
    """A domain of the VM's name exists: keep it when it is the same VM, refuse otherwise; start it if it is off."""
    host = virsh.target.description
    if existing.recorded is None:
        raise Conflict(messages.VM_EXISTS_FOREIGN.format(host=host, name=spec.name))
    hard, soft = spec_differences(existing.recorded, spec)
    if not hard and existing.vcpus != spec.cpus:  # the recorded spec agrees, but the domain was edited since
        hard.append(f"vCPUs in its XML: {existing.vcpus} -> {spec.cpus}")
    if not hard and existing.memory_kib != spec.ram_mib * KIB:
        hard.append(f"memory in its XML: {existing.memory_kib // KIB} MiB -> {spec.ram_mib} MiB")
    if hard:
        raise Conflict(messages.VM_EXISTS_DIFFERENT.format(host=host, name=spec.name, differences="; ".join(hard)))
    report.kept(f"domain {spec.name} kept: defined with the same spec ({spec.cpus} vCPUs, {spec.ram_mib} MiB,"
                f" {spec.osdisk_gib}+{spec.datadisk_gib} GiB)")
    if soft:
        report.note(f"domain {spec.name}: first-boot settings differ and are not applied to an existing VM"
                    f" ({'; '.join(soft)})")
    state = (await virsh.run("domstate", spec.name, what=f"reading the state of {spec.name}",
                             reads=True)).text.strip()
    if state == "running":
        report.kept(f"domain {spec.name} running")
    else:
        await virsh.run("start", spec.name, what=f"starting domain {spec.name}")
        report.changed(f"domain {spec.name} started (was {state or 'unknown'})")


# --- DNS on the shell host ---------------------------------------------------------------------------------
async def read_cluster_domain(shell: Target, paths: Paths | None = None) -> str:
    """The cluster's DNS domain: the shell host's ``/etc/convocate/domain``, else :data:`DEFAULT_DOMAIN`."""
    data = await shell.read_file(str((paths or Paths()).shell_domain_file))
    words = data.decode("utf-8", "replace").split() if data else []
    return words[0].lower() if words else DEFAULT_DOMAIN


async def register_vm_dns(shell: Target, name: str, ip: str, domain: str, *, report: StepReport,
                          hosts_path: str | None = None, attempts: int = 5) -> bool:
    """Put ``<ip> <name>.<domain> <name>`` in the cluster's dnsmasq hosts file on the shell host.

    The line carries create-vm's own marker (:data:`DNS_MARKER`), which status-serve does not
    own, so status-serve keeps it when it rewrites its block (DESIGN §5). The file is replaced
    atomically (temporary file, rename) with its mode and owner kept, and only if nobody changed
    it since it was read (compare-and-swap on its SHA-256, retried); ``convocate-dnsmasq-reload.path``
    then has dnsmasq re-read it.

    Args:
        shell: The shell host.
        name: The VM name.
        ip: Its address.
        domain: The cluster domain (``""`` for bare names).
        report: Where the step is recorded.
        hosts_path: The hosts file (``Paths.dnsmasq_hosts``, ``/var/lib/convocate/dnsmasq-hosts``).
        attempts: How often to retry when the file changes under us.

    Returns:
        True when the file changed.

    Raises:
        Conflict: another line already names the VM.
        HostError: the shell host has no ``/var/lib/convocate``, or the file kept changing.
    """
    path = hosts_path or str(Paths().dnsmasq_hosts)
    directory = posixpath.dirname(path)
    if not (await shell.sh('[ -d "$1" ]', directory, check=False, reads=True)).ok:
        raise HostError(messages.VM_DNS_NO_SHELL.format(host=shell.description, directory=directory))
    for _ in range(attempts):
        raw = await shell.read_file(path)
        current = raw.decode("utf-8", "replace") if raw is not None else ""
        new = render_vm_record(current, name, ip, domain, host=shell.description, path=path)
        if new == current:
            report.kept(f"DNS record {name}.{domain} -> {ip} in {path}" if domain else f"DNS record {name} -> {ip}")
            return False
        state = await shell.file_state(path)
        if state is not None:
            mode, owner = state.mode, state.owner
        else:
            mode, owner = 0o644, (await shell.sh('stat -c %U:%G -- "$1"', directory, reads=True)).text.strip()
        try:
            await shell.write_file(path, new.encode(), mode=mode, owner=owner,
                                   expect_sha256=hashlib.sha256(raw).hexdigest() if raw is not None else ABSENT)
        except FileChanged:
            continue  # status-serve rewrote it meanwhile: read it again
        report.changed(f"DNS record {vm_record(name, ip, domain).split(' #')[0]} written to {path}")
        return True
    raise HostError(messages.VM_DNS_BUSY.format(host=shell.description, path=path))


# --- command line --------------------------------------------------------------------------------------------
def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``create-vm`` to ``convocate-host``'s subcommands; its ``func`` runs it and returns the exit status."""
    p = subparsers.add_parser(
        "create-vm", help="boot a new VM on a KVM hypervisor",
        description="Turn a host into a KVM hypervisor (libvirt) and boot a new Ubuntu VM on it with cloud-init: "
        "two virtio disks (the OS disk, and a data disk mounted at /var), an SSH key for the image's default user "
        "(ubuntu), and the VM's name in the cluster DNS. Refused before anything changes when the VM would take "
        "the CPUs, memory or disk pledged to all defined VMs past 90%% of the host. A second run with the same "
        "spec changes nothing.")
    p.add_argument("--hypervisor", required=True, metavar="HOST",
                   help="the host to run the VM: an SSH host name or address, or 'local' for this machine")
    p.add_argument("--name", required=True, help="VM name: one DNS label (a-z, 0-9, -); also its host and DNS name")
    p.add_argument("--cpu", required=True, type=int, metavar="N", help="vCPUs")
    p.add_argument("--ram", required=True, metavar="SIZE", help="memory: MiB (2048) or GiB with G (2G)")
    p.add_argument("--osdisk", required=True, type=int, metavar="GIB", help="OS disk (vda) in GiB")
    p.add_argument("--datadisk", required=True, type=int, metavar="GIB", help="data disk (vdb, /var) in GiB")
    p.add_argument("--image", default=UBUNTU_CLOUD_IMAGE,
                   help="cloud image: a path on the hypervisor or an http(s) URL [Ubuntu 24.04: %(default)s]")
    p.add_argument("--ssh-key", type=Path, default=Path("~/.ssh/id_ed25519.pub"), metavar="FILE",
                   help="ed25519 public key for the VM's default user [%(default)s]")
    p.add_argument("--ip", metavar="ADDRESS/PREFIX", help="static IPv4 address [DHCP]")
    p.add_argument("--gateway", help="default gateway with --ip [the network's first address]")
    p.add_argument("--nameserver", action="append", default=[], help="DNS server with --ip, repeatable [the gateway]")
    p.add_argument("--network", default=DEFAULT_NETWORK,
                   help="libvirt network, or bridge:BRIDGE for a host bridge [%(default)s]")
    p.add_argument("--pool-dir", default=DEFAULT_POOL_DIR, help="directory for the image and disks [%(default)s]")
    p.add_argument("--shell-host", metavar="HOST",
                   help="the shell host whose dnsmasq serves the cluster DNS ('local' for this machine) [no DNS]")
    p.add_argument("--domain", help="cluster DNS domain [the shell host's /etc/convocate/domain, else "
                   f"{DEFAULT_DOMAIN}]")
    p.add_argument("--uri", default=DEFAULT_URI, help="libvirt connection URI on the hypervisor [%(default)s]")
    p.add_argument("--no-install", action="store_true", help="do not install missing KVM/libvirt packages")
    p.add_argument("--ip-wait", type=float, default=IP_WAIT_S, metavar="SECONDS",
                   help="how long to wait for a DHCP lease [%(default)g]")
    add_ssh_options(p)
    p.set_defaults(func=lambda args: asyncio.run(command(args)))
    return p


def spec_from_args(args: argparse.Namespace, domain: str = "") -> VMSpec:
    """The spec of a ``create-vm`` command line; reads the ``--ssh-key`` file.

    Raises:
        BadRequest: an option breaks its rule.
        ConfigError: the key file is unreadable or not an ed25519 public key.
    """
    key_file = args.ssh_key.expanduser()
    try:
        key = key_file.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(messages.KEY_UNREADABLE.format(path=key_file, detail=e)) from e
    return make_spec(name=args.name, cpus=args.cpu, ram=args.ram, osdisk=args.osdisk, datadisk=args.datadisk,
                     ssh_key=key, image=args.image, network=args.network, ip=args.ip, gateway=args.gateway,
                     nameservers=args.nameserver, pool_dir=args.pool_dir, domain=domain)


async def command(args: argparse.Namespace) -> int:
    """Run ``create-vm`` from its parsed arguments; returns 0 (errors are raised for ``run_main``)."""
    spec = spec_from_args(args, args.domain or "")  # bad options fail before any login
    shell = await open_target(args, args.shell_host) if args.shell_host else None
    # A local shell host honours CONVOCATE_ROOT like every convocate command; a remote one is a real host.
    shell_paths = Paths.from_env() if args.shell_host == "local" else Paths()
    try:
        if shell is not None and not args.domain:
            spec = spec_from_args(args, await read_cluster_domain(shell, shell_paths))
        hypervisor = await open_target(args, args.hypervisor)
        try:
            report = report_for(hypervisor)
            result = await create_vm(hypervisor, spec, uri=args.uri, install_stack=not args.no_install,
                                     report=report, ip_timeout_s=args.ip_wait)
        finally:
            await hypervisor.close()
        if result.stopped:
            pass  # the dry run's note says where it stopped; there is no address to register
        elif result.ip is not None:
            report.kept(f"VM {spec.name} address {result.ip} ({result.ip_source})")
        elif not hypervisor.dry_run:
            report.note(messages.VM_NO_IP.format(name=spec.name, source=result.ip_source, seconds=args.ip_wait))
        if shell is None and not result.stopped:
            report.note(messages.VM_NO_SHELL_HOST.format(name=spec.name))
        report.finish("create-vm")
        if shell is not None and result.ip is not None:
            shell_report = report_for(shell)
            await register_vm_dns(shell, spec.name, result.ip, spec.domain, report=shell_report,
                                  hosts_path=str(shell_paths.dnsmasq_hosts))
            shell_report.finish("create-vm")
    finally:
        if shell is not None:
            await shell.close()
    return 0
