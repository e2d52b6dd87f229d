"""The create flow: :func:`create_vm` makes a host a KVM hypervisor running one VM (steps: :mod:`convocate_host.vm`).

Besides the flow it holds the steps that change the hypervisor's packages and files: the
KVM/libvirt stack, the cloud image, the two disks and the seed ISO, and the lock two runs
share. Each step is idempotent and records what it did in a :class:`StepReport`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from convocate.common import messages
from convocate.common.errors import BadRequest, Conflict
from convocate.common.hostsetup import StepReport
from convocate_host.debs import APT_ENV
from convocate_host.target import HostError, Target
from convocate_host.vm.domain import domain_xml
from convocate_host.vm.preflight import (
    GIB,
    KIB,
    DomainConfig,
    check_admission,
    parse_dpkg_installed,
    parse_image_info,
    short_number,
)
from convocate_host.vm.seed import seed_files
from convocate_host.vm.spec import VMSpec, spec_differences, vm_layout
from convocate_host.vm.virsh import (
    DEFAULT_URI,
    IP_WAIT_S,
    HypervisorError,
    Virsh,
    ensure_network,
    probe_hypervisor,
    vm_address,
    wait_for_libvirt,
)

#: What a KVM hypervisor needs (Debian 12 and Ubuntu 24.04 names): the emulator, qemu-img, the
#: libvirt daemon (which pulls in the ``default`` NAT network) and virsh, dnsmasq for that
#: network's DHCP (only a Recommends of libvirt-daemon-system), genisoimage for the seed ISO,
#: curl to fetch the cloud image.
KVM_PACKAGES = ("qemu-system-x86", "qemu-utils", "libvirt-daemon-system", "libvirt-daemon-driver-qemu",
                "libvirt-clients", "dnsmasq-base", "genisoimage", "curl", "ca-certificates")
#: Held on the hypervisor (flock(1)) from the admission check to the domain's definition, so two
#: create-vm runs cannot both admit a VM into the same headroom; and how long to wait for it.
LOCK_PATH = "/run/lock/convocate-create-vm.lock"
LOCK_WAIT_S = 600.0


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


def _written_in_place(arguments: str, commands: str, mode: str) -> str:
    """A sh script whose ``commands`` write ``"$tmp"``; it becomes ``"$dest"`` with ``mode`` once they all succeed.

    ``arguments`` names the positional parameters and must set ``dest``; a failure removes the
    partial ``$dest.part`` and leaves ``$dest`` as it was.
    """
    return (f'set -eu\n{arguments}\ntmp="$dest.part"\ntrap \'rm -f -- "$tmp"\' EXIT\n{commands}\n'
            f'chmod {mode} "$tmp"\nmv -f -- "$tmp" "$dest"\ntrap - EXIT\n')


_OS_DISK_SCRIPT = _written_in_place("src=$1 fmt=$2 dest=$3 size=$4",
                                    'qemu-img convert -q -f "$fmt" -O qcow2 "$src" "$tmp"\n'
                                    'qemu-img resize -q -f qcow2 "$tmp" "$size"', "0600")
_DATA_DISK_SCRIPT = _written_in_place("dest=$1 size=$2", 'qemu-img create -q -f qcow2 "$tmp" "$size"', "0600")
_ISO_SCRIPT = _written_in_place("dest=$1 dir=$2\nshift 2",
                                'cd "$dir"\ngenisoimage -quiet -output "$tmp" -volid cidata -joliet -rock "$@"', "0644")


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
            raise Conflict(messages.VM_DISK_EXISTS.format(
                host=target.description, path=path, name=spec.name, actual=f"{short_number(info[1] / GIB)} GiB",
                wanted=f"{gib} GiB"))
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
    """Make ``target`` a KVM hypervisor running the VM of ``spec`` (:mod:`convocate_host.vm` lists the steps).

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
    if not await wait_for_libvirt(virsh):
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
            wanted=spec.osdisk_gib, image=layout.image, actual=f"{short_number(image_size / GIB)} GiB",
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
