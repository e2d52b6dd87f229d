"""create-vm's spec: what the operator asks for, checked, and what a domain records of it.

:func:`make_spec` turns the command line's values into a :class:`VMSpec` (every field checked,
the message naming the option and its rule); :func:`vm_layout` places its files in the pool
directory; :func:`spec_metadata` and :func:`spec_differences` let a second run tell the same VM
from another VM of the same name. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import ipaddress
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from convocate.common import keys, messages
from convocate.common.errors import BadRequest
from convocate_host.vm.preflight import GIB, KIB, Resources

#: libvirt's own image directory on Debian and Ubuntu (libvirt-daemon-system creates it, mode 0711).
DEFAULT_POOL_DIR = "/var/lib/libvirt/images"
#: Ubuntu 24.04 LTS (noble) server cloud image; ``SHA256SUMS`` lies in the same directory.
UBUNTU_CLOUD_IMAGE = "https://cloud-images.ubuntu.com/releases/noble/release/ubuntu-24.04-server-cloudimg-amd64.img"
#: The NAT network ``libvirt-daemon-config-network`` defines (virbr0, 192.168.122.0/24, DHCP).
DEFAULT_NETWORK = "default"

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_NET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SAFE_PATH = re.compile(r"/[A-Za-z0-9._/+-]*")
#: A plain token: it needs no quoting in a virsh command line (:meth:`~convocate_host.vm.virsh.Virsh.session`),
#: and a URL's file name must be one.
SAFE_TOKEN = re.compile(r"[A-Za-z0-9_./:=@+,-]+")
_RAM = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([MG]?)(?:I?B)?\s*", re.I)


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
    vm_name = name.lower()
    if not _LABEL.fullmatch(vm_name):
        raise BadRequest(messages.VM_BAD_NAME.format(value=name))
    if not isinstance(cpus, int) or not 1 <= cpus <= 1024:
        raise _bad("--cpu", cpus, "a whole number of vCPUs, 1 to 1024")
    ram_mib = parse_ram(ram)
    if ram_mib < 512:
        raise _bad("--ram", ram, "at least 512 MiB")
    for option, value in (("--osdisk", osdisk), ("--datadisk", datadisk)):
        if not isinstance(value, int) or not 1 <= value <= 65536:
            raise _bad(option, value, "a whole number of GiB, 1 to 65536")
    key = keys.parse_public_key(ssh_key, source="--ssh-key")
    _check_paths(image, pool_dir)
    address, gw, dns = _static_address(ip, gateway, nameservers)
    if domain:
        if len(vm_name) + 1 + len(domain) > 253 or not all(_LABEL.fullmatch(x) for x in domain.lower().split(".")):
            raise _bad("--domain", domain, "RFC 1123 labels of a-z, 0-9 and '-' separated by dots, at most 253"
                       " characters with the VM name")
    return VMSpec(name=vm_name, cpus=cpus, ram_mib=ram_mib, osdisk_gib=osdisk, datadisk_gib=datadisk,
                  ssh_key=keys.public_key_line(key), image=image, network=parse_network(network), ip=address,
                  gateway=gw, nameservers=dns, pool_dir=posixpath.normpath(pool_dir), domain=domain.lower())


def _bad(option: str, value: object, rule: str) -> BadRequest:
    return BadRequest(messages.VM_BAD_OPTION.format(option=option, value=value, rule=rule))


def _check_paths(image: str, pool_dir: str) -> None:
    """``--image`` (an http(s) URL ending in a plain file name, or a plain absolute path) and ``--pool-dir``.

    Raises:
        BadRequest: either breaks its rule.
    """
    if image.startswith(("https://", "http://")):
        file_name = posixpath.basename(image.split("?", 1)[0])
        if not file_name or not SAFE_TOKEN.fullmatch(file_name):
            raise _bad("--image", image, "the URL must end in a plain file name")
    elif not _SAFE_PATH.fullmatch(image) or "/../" in image + "/":
        raise _bad("--image", image, "an absolute path on the hypervisor or an http(s) URL")
    if not _SAFE_PATH.fullmatch(pool_dir) or "/../" in pool_dir + "/":
        raise _bad("--pool-dir", pool_dir, "an absolute path of letters, digits and . _ / + -")


def _static_address(ip: str | None, gateway: str | None, nameservers: Sequence[str]) \
        -> tuple[ipaddress.IPv4Interface | None, ipaddress.IPv4Address | None, tuple[ipaddress.IPv4Address, ...]]:
    """``--ip``, ``--gateway`` and ``--nameserver``: see :func:`make_spec`.

    Returns:
        ``(address with prefix, gateway, nameservers)``; ``(None, None, ())`` for DHCP.

    Raises:
        BadRequest: an address is not IPv4, the gateway is outside the VM's network, or a
            gateway or nameserver is given without ``ip``.
    """
    if ip is None:
        if gateway or nameservers:
            raise _bad("--gateway/--nameserver", gateway or ",".join(nameservers), "only with a static --ip")
        return None, None, ()
    if "/" not in ip:
        raise _bad("--ip", ip, "give the prefix length too, e.g. 192.168.122.50/24")
    try:
        address = ipaddress.IPv4Interface(ip)
    except ValueError as e:
        raise _bad("--ip", ip, f"not an IPv4 address with a prefix ({e})") from None
    hosts = address.network.num_addresses > 2
    if hosts and address.ip in (address.network.network_address, address.network.broadcast_address):
        raise _bad("--ip", ip, "the network or broadcast address of its network")
    try:
        gw = ipaddress.IPv4Address(gateway) if gateway else next(address.network.hosts())
        dns = tuple(ipaddress.IPv4Address(n) for n in nameservers) or (gw,)
    except (ValueError, StopIteration) as e:
        raise _bad("--gateway/--nameserver", gateway or ",".join(nameservers), f"not IPv4 addresses ({e})") \
            from None
    if gw not in address.network:
        raise _bad("--gateway", str(gw), f"not in the VM's network {address.network}")
    return address, gw, dns


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
