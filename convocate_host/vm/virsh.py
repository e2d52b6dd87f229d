"""virsh(1) on the hypervisor: the :class:`Virsh` executor and the steps that only talk to libvirt.

:func:`probe_hypervisor` reads the host's capacity and every domain's pledge for admission
(read-only); :func:`wait_for_libvirt`, :func:`ensure_network` and :func:`vm_address` are steps
of :func:`~convocate_host.vm.create.create_vm`. Every command goes to the libvirt URI given
(``qemu:///system`` by default), so tests point them at libvirt's ``test`` driver (its node file
format: ``examples/xml/test/testnode.xml`` in libvirt).
"""

from __future__ import annotations

import asyncio
import posixpath
import shlex
from collections.abc import Sequence

from convocate.common import messages
from convocate.common.capacity import parse_meminfo
from convocate.common.hostsetup import StepReport
from convocate_host.target import CommandResult, HostError, Target
from convocate_host.vm.domain import parse_domain_xml
from convocate_host.vm.preflight import (
    DiskRef,
    DomainConfig,
    HostCapacity,
    Hypervisor,
    Resources,
    parse_capacity,
    parse_df,
    parse_domifaddr,
    parse_fields,
    parse_nodeinfo,
    parse_pool_xml,
)
from convocate_host.vm.spec import DEFAULT_POOL_DIR, SAFE_TOKEN, NetworkRef, VMSpec

DEFAULT_URI = "qemu:///system"
#: How long to wait for a DHCP lease, in seconds, and how often to ask.
IP_WAIT_S = 180.0
IP_POLL_S = 3.0
#: virsh must print in English: its output is parsed.
_VIRSH_ENV = ("env", "LC_ALL=C")


class HypervisorError(HostError):
    """The hypervisor cannot run the VM as asked (no KVM, no libvirt, no such network, no apt)."""


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
                if not SAFE_TOKEN.fullmatch(token):
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
        meminfo = parse_meminfo(out)  # nproc's line has no colon: not a field
        if "MemTotal" not in meminfo:
            raise ValueError("/proc/meminfo has no MemTotal")
        cpus, memory_kib = int(out.split()[0]), meminfo["MemTotal"]
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

async def wait_for_libvirt(virsh: Virsh, timeout_s: float = 30.0) -> bool:
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
    fields = parse_fields(info.text)
    if fields.get("Active") == "yes":
        report.kept(f"libvirt network {network.name} active")
        if fields.get("Autostart") != "yes":
            report.note(f"libvirt network {network.name} does not autostart: VMs on it lose their network after a"
                        f" host reboot until `virsh net-start {network.name}` (virsh net-autostart {network.name})")
        return
    await virsh.session([["net-start", network.name], ["net-autostart", network.name]],
                        what=f"starting libvirt network {network.name}")
    report.changed(f"libvirt network {network.name} started and marked autostart")


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
