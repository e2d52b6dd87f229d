"""``convocate-host create-vm``: planning, admission, domain XML and seed, and runs against libvirt's test driver.

The pure tests need nothing. The driver tests run the real executor on this machine through a
:class:`LocalTarget` (virsh, qemu-img, genisoimage from ``./build.sh deps``) with every libvirt
command pointed at libvirt's ``test`` driver: a ``test:///<node.xml>`` file written per test
gives the hypervisor its CPUs, memory, storage pool, network and already defined domains. The
test driver keeps state only for one connection, so a file holding the domain the first run
defined stands in for libvirtd's memory in the second run. Every command is recorded, and the
ones that would change a host (package installs) are refused before they run.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from convocate import dns
from convocate.common import keys, messages
from convocate.common.capacity import parse_meminfo
from convocate.common.errors import AdmissionDenied, BadRequest, ConfigError, Conflict
from convocate.common.hostsetup import StepReport
from convocate.common.paths import Paths
from convocate_host import cli, vm
from convocate_host import report as reports
from convocate_host.dryrun import DryRunTarget
from convocate_host.report import LiveReport
from convocate_host.target import CommandResult, HostError, LocalTarget
from convocate_host.vm import create as vm_create
from convocate_host.vm import preflight

GIB = 1024 ** 3

needs_virsh = pytest.mark.skipif(not shutil.which("virsh"), reason="virsh missing: ./build.sh deps (libvirt-clients)")
needs_tools = pytest.mark.skipif(not all(shutil.which(t) for t in ("virsh", "qemu-img", "genisoimage", "isoinfo")),
                                 reason="virsh/qemu-img/genisoimage missing: ./build.sh deps")

#: virsh commands that only read.
READ_ONLY_VIRSH = {"nodeinfo", "list", "dumpxml", "pool-list", "pool-dumpxml", "vol-info", "domblkinfo", "domstate",
                   "net-info", "domifaddr"}


# --- fixtures -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ssh_key() -> str:
    return keys.public_key_line(keys.generate_key("operator@laptop"))


@pytest.fixture(scope="module")
def base_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1 GiB qcow2 standing in for the Ubuntu cloud image (no download here)."""
    if not shutil.which("qemu-img"):
        pytest.skip("qemu-img missing: ./build.sh deps (qemu-utils)")
    path = tmp_path_factory.mktemp("image") / "cloudimg.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "1G"], check=True)
    return path


class RecordingTarget(LocalTarget):
    """This machine, recording every command; package managers are refused before they run."""

    def __init__(self) -> None:
        super().__init__("127.0.0.1")
        self.commands: list[tuple[str, ...]] = []

    async def _exec(self, argv: Sequence[str], input: bytes | None, timeout: float) -> CommandResult:
        argv = tuple(argv)
        self.commands.append(argv)
        if {"apt-get", "dpkg", "apt"} & set(argv):
            raise AssertionError(f"a test tried to install packages: {argv}")
        return await super()._exec(argv, input, timeout)

    def virsh_commands(self) -> list[str]:
        """Each virsh command run (a session counts once per command in it)."""
        out = []
        for argv in self.commands:
            if "virsh" in argv:
                rest = argv[argv.index("virsh") + 3:]
                line = rest[0] if len(rest) == 1 and " " in rest[0] else " ".join(rest)
                out.extend(c.strip() for c in line.split(" ; "))
        return out

    def changes(self) -> list[str]:
        """Commands that would change a host: mutating virsh commands, disk and ISO tools, file writes."""
        found = [c for c in self.virsh_commands() if c.split()[0] not in READ_ONLY_VIRSH]
        for argv in self.commands:
            script = argv[2] if argv[:2] == ("sh", "-c") else ""
            if argv[0] in ("qemu-img", "install", "rm", "mv", "genisoimage") and "info" not in argv:
                found.append(" ".join(argv))
            elif any(word in script for word in ("qemu-img create", "qemu-img convert", "genisoimage", "mv -f",
                                                 "curl ")):
                found.append(script.splitlines()[1] if "\n" in script else script)
        return found


def write_node(path: Path, *, cpus: int = 16, memory_gib: int = 32, pool_dir: Path,
               volumes: Sequence[tuple[str, int]] = (), domains: Sequence[str] = ()) -> str:
    """A test driver node file (libvirt examples/xml/test/testnode.xml); returns its URI.

    The storage pool ``images`` at ``pool_dir`` holds ``volumes`` (name, GiB); the test driver
    always gives a pool 100 GiB of capacity, whatever the file says.
    """
    vols = "".join(f"""
    <volume type="file"><name>{name}</name><capacity unit="GiB">{gib}</capacity>
      <allocation unit="GiB">0</allocation><target><path>{pool_dir}/{name}</path></target></volume>"""
                   for name, gib in volumes)
    path.write_text(f"""<?xml version="1.0"?>
<node xmlns:test="http://libvirt.org/schemas/domain/test/1.0">
  <cpu><mhz>2000</mhz><model>x86_64</model><active>{cpus}</active><nodes>1</nodes><sockets>1</sockets>
    <cores>{cpus}</cores><threads>1</threads></cpu>
  <memory>{memory_gib * 1024 * 1024}</memory>
  {"".join(domains)}
  <network><name>default</name><bridge name="virbr0"/>
    <ip address="192.168.122.1" netmask="255.255.255.0">
      <dhcp><range start="192.168.122.2" end="192.168.122.254"/></dhcp></ip></network>
  <pool type="dir"><name>images</name>
    <target><path>{pool_dir}</path></target>{vols}
  </pool>
</node>
""", encoding="utf-8")
    return f"test://{path}"


def other_domain(name: str, *, vcpus: int, memory_gib: int, disks: Sequence[str], running: bool = False) -> str:
    """Another VM on the hypervisor (shut off unless ``running``: a stopped VM pledges as much)."""
    devices = "".join(f'<disk type="file" device="disk"><source file="{d}"/><target dev="vd{chr(97 + i)}" '
                      f'bus="virtio"/></disk>' for i, d in enumerate(disks))
    state = "" if running else "<test:runstate>5</test:runstate>"
    return f"""<domain type="kvm"><name>{name}</name><memory unit="GiB">{memory_gib}</memory><vcpu>{vcpus}</vcpu>
      <os><type arch="x86_64">hvm</type></os><devices>{devices}</devices>{state}</domain>"""


def spec_for(ssh_key: str, image: Path | str, pool_dir: Path, **overrides) -> vm.VMSpec:
    options = dict(name="web", cpus=2, ram="2G", osdisk=2, datadisk=1, ssh_key=ssh_key, image=str(image),
                   ip="192.168.122.50/24", pool_dir=str(pool_dir), domain="convocate.internal")
    options.update(overrides)
    return vm.make_spec(**options)


def quick(tmp_path: Path) -> dict:
    """create_vm options for tests: ask for the address once, lock a file in the test's directory."""
    return {"ip_timeout_s": 0, "lock_path": str(tmp_path / "create-vm.lock")}


def virsh_session(uri: str, line: str, input: str | None = None) -> str:
    result = subprocess.run(["virsh", "-c", uri, line], input=input, capture_output=True, text=True,
                            env={**os.environ, "LC_ALL": "C"}, check=False)
    assert result.returncode == 0 and "error:" not in result.stderr, result.stderr
    return result.stdout


def user_data_body(text: str) -> dict:
    """The cloud-config after its ``#cloud-config`` line and comments (YAML comments, then a JSON body)."""
    assert text.startswith("#cloud-config\n")
    return json.loads("\n".join(line for line in text.splitlines() if not line.startswith("#")))


# --- the spec -------------------------------------------------------------------------------------------
def test_ram_takes_mib_or_a_g_suffix() -> None:
    assert vm.parse_ram("2048") == 2048
    assert vm.parse_ram("512M") == 512
    assert vm.parse_ram("2G") == 2048
    assert vm.parse_ram("1.5GiB") == 1536
    for bad in ("two", "2T", "1.3M", ""):
        with pytest.raises(BadRequest, match="--ram"):
            vm.parse_ram(bad)


def test_spec_normalises_and_fills_defaults(ssh_key: str) -> None:
    spec = vm.make_spec(name="Web-1", cpus=4, ram="4G", osdisk=20, datadisk=50, ssh_key=ssh_key + "\n",
                        ip="10.0.0.7/24")
    assert (spec.name, spec.cpus, spec.ram_mib, spec.osdisk_gib, spec.datadisk_gib) == ("web-1", 4, 4096, 20, 50)
    assert spec.image == vm.UBUNTU_CLOUD_IMAGE and spec.pool_dir == vm.DEFAULT_POOL_DIR
    assert str(spec.gateway) == "10.0.0.1" and [str(n) for n in spec.nameservers] == ["10.0.0.1"]
    assert spec.network == vm.NetworkRef("network", "default")
    assert spec.mac.startswith("52:54:00:") and spec.mac == vm.make_spec(
        name="web-1", cpus=1, ram=512, osdisk=1, datadisk=1, ssh_key=ssh_key).mac
    assert vm.vm_layout(spec).image == "/var/lib/libvirt/images/ubuntu-24.04-server-cloudimg-amd64.img"
    assert vm.make_spec(name="a", cpus=1, ram=512, osdisk=1, datadisk=1, ssh_key=ssh_key,
                        network="bridge:br0").network == vm.NetworkRef("bridge", "br0")


@pytest.mark.parametrize(("overrides", "option"), [
    ({"name": "-web"}, "--name"), ({"name": "web.example"}, "--name"), ({"name": "x" * 64}, "--name"),
    ({"cpus": 0}, "--cpu"), ({"ram": "256"}, "--ram"), ({"osdisk": 0}, "--osdisk"), ({"datadisk": -1}, "--datadisk"),
    ({"ip": "10.0.0.7"}, "--ip"), ({"ip": "10.0.0.0/24"}, "--ip"), ({"ip": "300.0.0.1/24"}, "--ip"),
    ({"ip": "10.0.0.7/24", "gateway": "10.9.9.9"}, "--gateway"), ({"gateway": "10.0.0.1"}, "--gateway"),
    ({"image": "relative.img"}, "--image"), ({"image": "https://example.org/images/"}, "--image"),
    ({"image": "/x/../etc/shadow"}, "--image"),
    ({"pool_dir": "/var/lib/my images"}, "--pool-dir"), ({"network": "bridge:br 0"}, "--network"),
    ({"domain": "bad_domain"}, "--domain"),
])
def test_spec_refuses_what_breaks_a_rule(ssh_key: str, overrides: dict, option: str) -> None:
    options = dict(name="web", cpus=1, ram=1024, osdisk=4, datadisk=1, ssh_key=ssh_key)
    options.update(overrides)
    with pytest.raises(BadRequest, match=option.split("/")[0]):
        vm.make_spec(**options)


def test_spec_wants_an_ed25519_key() -> None:
    rsa = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 someone"
    with pytest.raises(ConfigError):
        vm.make_spec(name="web", cpus=1, ram=1024, osdisk=4, datadisk=1, ssh_key=rsa)


# --- parsing what the host prints ---------------------------------------------------------------------
NODEINFO = """\
CPU model:           x86_64
CPU(s):              16
CPU frequency:       1400 MHz
Memory size:         3145728 KiB
"""


def test_parsers_read_virsh_df_and_proc() -> None:
    assert vm.parse_nodeinfo(NODEINFO) == (16, 3145728)
    assert vm.parse_capacity("Name:           old.qcow2\nCapacity:       64424509440 bytes\n") == 64424509440
    assert vm.parse_capacity("Capacity:       1099506450432\nAllocation:     1\n") == 1099506450432
    assert vm.parse_df("Filesystem 1-blocks Used Available Capacity Mounted on\n/dev/vda1 1000 10 990 1% /\n") == 1000
    assert parse_meminfo("MemTotal:       24576000 kB\nMemFree: 1 kB\n")["MemTotal"] == 24576000
    assert vm.parse_dpkg_installed("qemu-utils installed\ncurl not-installed\ngenisoimage config-files\n") == \
        {"qemu-utils"}
    table = """\
 Name       MAC address          Protocol     Address
-------------------------------------------------------------------------------
 vnet0      52:54:00:aa:bb:cc    ipv4         192.168.122.57/24
 -          -                    ipv6         fe80::1/64
 vnet1      52:54:00:00:00:01    ipv4         10.0.0.9/8
"""
    assert [str(a) for a in vm.parse_domifaddr(table)] == ["192.168.122.57", "10.0.0.9"]
    assert [str(a) for a in vm.parse_domifaddr(table, "52:54:00:AA:BB:CC")] == ["192.168.122.57"]


def test_domain_xml_parses_back_with_pledge_and_spec(ssh_key: str, tmp_path: Path) -> None:
    spec = spec_for(ssh_key, "/images/base.img", tmp_path)
    config = vm.parse_domain_xml(vm.domain_xml(spec))
    assert (config.name, config.vcpus, config.memory_kib) == ("web", 2, 2048 * 1024)
    assert [(d.target, d.device) for d in config.disks] == [("vda", "disk"), ("vdb", "disk"), ("sda", "cdrom")]
    assert config.recorded == vm.spec_metadata(spec)
    assert vm.spec_differences(config.recorded, spec) == ([], [])
    other = spec_for(keys.public_key_line(keys.generate_key()), "/images/base.img", tmp_path, cpus=3)
    hard, soft = vm.spec_differences(config.recorded, other)
    assert hard == ["cpus: 2 -> 3"] and [s.split(":")[0] for s in soft] == ["ssh-key-sha256"]


# --- admission -------------------------------------------------------------------------------------------
def capacity(cpus: int = 16, memory_gib: int = 32, disk_gib: int = 500) -> vm.HostCapacity:
    return vm.HostCapacity(vm.Resources(cpus, memory_gib * 1024 * 1024, disk_gib * GIB), "virsh nodeinfo", "pool")


def test_admission_allows_exactly_90_percent() -> None:
    line = vm.check_admission(capacity(10, 10, 100), vm.Resources(5, 5 * 1024 * 1024, 60 * GIB),
                              vm.Resources(4, 4 * 1024 * 1024, 30 * GIB), name="web", host="h")
    assert line == ("admission: CPU 5 vCPUs pledged + 4 vCPUs asked of 9 vCPUs allowed; RAM 5120 MiB pledged"
                    " + 4096 MiB asked of 9216 MiB allowed; disk 60 GiB pledged + 30 GiB asked of 90 GiB allowed")


@pytest.mark.parametrize(("axis", "pledged", "asked", "words"), [
    ("CPU", vm.Resources(cpus=12), vm.Resources(cpus=3),
     "CPU asked 3 vCPUs, pledged 12 vCPUs, allowed 14.4 vCPUs (90% of 16 vCPUs on this hypervisor)"),
    ("RAM", vm.Resources(memory_kib=28 * 1024 * 1024), vm.Resources(memory_kib=1024 * 1024),
     "RAM asked 1024 MiB, pledged 28672 MiB, allowed 29491.2 MiB (90% of 32768 MiB on this hypervisor)"),
    ("disk", vm.Resources(disk_bytes=440 * GIB), vm.Resources(disk_bytes=11 * GIB),
     "disk asked 11 GiB, pledged 440 GiB, allowed 450 GiB (90% of 500 GiB on this hypervisor)"),
])
def test_admission_refuses_past_90_percent_on_each_axis(axis: str, pledged: vm.Resources, asked: vm.Resources,
                                                        words: str) -> None:
    with pytest.raises(AdmissionDenied) as caught:
        vm.check_admission(capacity(), pledged, asked, name="web", host="admin@hv1")
    assert str(caught.value) == f"admission denied for VM web on admin@hv1, nothing was changed: {words}"


def test_admission_names_every_axis_it_refuses() -> None:
    with pytest.raises(AdmissionDenied) as caught:
        vm.check_admission(capacity(2, 2, 10), vm.Resources(), vm.Resources(2, 2 * 1024 * 1024, 10 * GIB),
                           name="web", host="h")
    assert [part.split()[0] for part in str(caught.value).split(": ", 1)[1].split("; ")] == ["CPU", "RAM", "disk"]


def test_pledge_counts_stopped_domains_and_shared_disks_once() -> None:
    host = vm.Hypervisor(capacity(), (vm.DomainConfig("a", 2, 1024), vm.DomainConfig("b", 3, 2048)),
                         {"/x/a.qcow2": 10 * GIB, "/x/shared.qcow2": 5 * GIB})
    assert host.pledged == vm.Resources(5, 3072, 15 * GIB)
    assert vm.DiskRef("vda", path="/x/a").key == "/x/a"
    assert vm.DiskRef("vda", pool="p", volume="v").key == "p/v"


# --- domain XML and the seed --------------------------------------------------------------------------
def test_domain_xml_is_kvm_with_two_virtio_disks_seed_cdrom_serial_console(ssh_key: str, tmp_path: Path) -> None:
    spec = spec_for(ssh_key, "https://example.org/images/noble.img?x=1&y=<2>", tmp_path, cpus=3, ram="3G")
    root = ET.fromstring(vm.domain_xml(spec))
    layout = vm.vm_layout(spec)
    assert root.get("type") == "kvm" and root.findtext("name") == "web"
    assert root.findtext("vcpu") == "3"
    assert (root.find("memory").get("unit"), root.findtext("memory")) == ("MiB", "3072")
    disks = [(d.get("device"), d.find("target").get("dev"), d.find("target").get("bus"), d.find("source").get("file"),
              d.find("driver").get("type")) for d in root.iterfind("devices/disk")]
    assert disks == [("disk", "vda", "virtio", layout.os_disk, "qcow2"), ("disk", "vdb", "virtio", layout.data_disk,
                     "qcow2"), ("cdrom", "sda", "sata", layout.seed_iso, "raw")]
    assert root.find("devices/disk[@device='cdrom']/readonly") is not None
    nic = root.find("devices/interface")
    assert (nic.get("type"), nic.find("source").get("network"), nic.find("model").get("type"),
            nic.find("mac").get("address")) == ("network", "default", "virtio", spec.mac)
    assert root.find("devices/serial/target").get("port") == "0"
    assert root.find("devices/console/target").get("type") == "serial"
    recorded = root.find(f"metadata/{{{vm.METADATA_NS}}}vm")
    assert recorded.get("image") == "https://example.org/images/noble.img?x=1&y=<2>"  # escaped and read back
    assert "&amp;" in vm.domain_xml(spec) and "&lt;2&gt;" in vm.domain_xml(spec)
    bridged = ET.fromstring(vm.domain_xml(spec_for(ssh_key, "/i.img", tmp_path, network="bridge:br0")))
    assert bridged.find("devices/interface").get("type") == "bridge"
    assert bridged.find("devices/interface/source").get("bridge") == "br0"


def test_user_data_formats_vdb_and_moves_var_before_mounting_it(ssh_key: str, tmp_path: Path) -> None:
    spec = spec_for(ssh_key, "/i.img", tmp_path)
    text = vm.user_data(spec)
    config = user_data_body(text)
    assert config["hostname"] == "web" and config["fqdn"] == "web.convocate.internal"
    assert config["ssh_authorized_keys"] == [ssh_key] and config["ssh_pwauth"] is False
    assert config["fs_setup"] == [{"label": vm.DATA_LABEL, "filesystem": "ext4", "device": "/dev/vdb",
                                   "partition": "none", "overwrite": False}]
    assert "mounts" not in config  # cc_mounts would mount the empty disk over the live /var at once
    script = config["write_files"][0]
    assert script["path"] == "/usr/local/sbin/convocate-move-var" and script["permissions"] == "0755"
    assert config["runcmd"] == [[script["path"]]]
    body = script["content"]
    assert body.index("cp -ax /var/.") < body.index("/etc/fstab\ntouch")  # copy first, then fstab, then reboot
    assert f"LABEL={vm.DATA_LABEL}" not in body.split("cp -ax")[0].split("grep -q")[0]
    assert "LABEL=$label /var ext4 defaults 0 2" in body
    assert config["power_state"]["mode"] == "reboot"
    assert config["power_state"]["condition"] == "test -e /run/convocate-move-var.reboot"
    assert "NOT listed under `mounts`" in text  # the reason is in the file the operator reads
    assert subprocess.run(["sh", "-n"], input=body, text=True).returncode == 0  # the script parses


def test_seed_has_meta_data_and_static_network_config_matched_by_mac(ssh_key: str, tmp_path: Path) -> None:
    spec = spec_for(ssh_key, "/i.img", tmp_path, ip="10.1.2.3/16", gateway="10.1.0.254", nameservers=["9.9.9.9"])
    files = vm.seed_files(spec)
    assert sorted(files) == ["meta-data", "network-config", "user-data"]
    meta = json.loads(files["meta-data"])
    assert meta["local-hostname"] == "web" and meta["instance-id"].startswith("convocate-web-")
    net = json.loads(files["network-config"])
    nic = net["ethernets"]["primary"]
    assert net["version"] == 2 and nic["match"] == {"macaddress": spec.mac}
    assert nic["addresses"] == ["10.1.2.3/16"] and nic["routes"] == [{"to": "default", "via": "10.1.0.254"}]
    assert nic["nameservers"] == {"addresses": ["9.9.9.9"], "search": ["convocate.internal"]}
    dhcp = spec_for(ssh_key, "/i.img", tmp_path, ip=None)
    assert sorted(vm.seed_files(dhcp)) == ["meta-data", "user-data"]
    assert json.loads(vm.seed_files(dhcp)["meta-data"])["instance-id"] != meta["instance-id"]


# --- the DNS record -----------------------------------------------------------------------------------------
STATUS_LINE = "10.0.0.5 build.convocate.internal build # convocate abcd1234 0b4fb9c6-6f2f-4d5e-9a57-2c5c0b1e8d11"


def test_vm_record_goes_among_foreign_lines_and_replaces_its_own() -> None:
    current = f"# hosts added by hand\n192.168.1.1 router\n{STATUS_LINE}\n"
    added = vm.render_vm_record(current, "web", "192.168.122.50", "convocate.internal")
    assert added.splitlines() == ["# hosts added by hand",
                                  "192.168.122.50 web.convocate.internal web # convocate-vm web",
                                  "192.168.1.1 router", STATUS_LINE]
    assert vm.render_vm_record(added, "web", "192.168.122.50", "convocate.internal") == added
    moved = vm.render_vm_record(added, "web", "192.168.122.77", "convocate.internal")
    assert moved == added.replace("192.168.122.50", "192.168.122.77")
    two = vm.render_vm_record(moved, "db", "192.168.122.8", "convocate.internal").splitlines()
    assert two[1:3] == ["192.168.122.77 web.convocate.internal web # convocate-vm web",
                        "192.168.122.8 db.convocate.internal db # convocate-vm db"]
    assert vm.render_vm_record("", "web", "10.0.0.1", "") == "10.0.0.1 web # convocate-vm web\n"


def test_vm_record_is_kept_by_status_serve() -> None:
    """status-serve's own renderer (convocate.dns) treats the VM line as a record it does not own."""
    ours = vm.render_vm_record(f"{STATUS_LINE}\n", "web", "192.168.122.50", "convocate.internal")
    vm_line = "192.168.122.50 web.convocate.internal web # convocate-vm web"
    assert not dns.is_ours(vm_line)
    record = dns.HostRecord("10.0.0.6", "api", "abcd1234", "1b4fb9c6-6f2f-4d5e-9a57-2c5c0b1e8d11")
    rewritten = dns.render_hosts(ours, [record], "convocate.internal")
    assert rewritten.splitlines()[0] == vm_line and STATUS_LINE not in rewritten
    assert vm.render_vm_record(rewritten, "web", "192.168.122.50", "convocate.internal") == rewritten


def test_vm_record_refuses_a_name_someone_else_holds() -> None:
    with pytest.raises(Conflict, match="build"):
        vm.render_vm_record(f"{STATUS_LINE}\n", "build", "192.168.122.50", "convocate.internal", host="shell",
                            path="/var/lib/convocate/dnsmasq-hosts")
    with pytest.raises(Conflict, match="router"):
        vm.render_vm_record("192.168.1.1 Router\n", "router", "192.168.122.50", "")


async def test_register_vm_dns_on_the_shell_host_is_atomic_and_idempotent(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    hosts = paths.dnsmasq_hosts
    hosts.parent.mkdir(parents=True)
    hosts.write_text(f"{STATUS_LINE}\n")
    hosts.chmod(0o640)
    shell = LocalTarget("127.0.0.1")
    report = StepReport()
    assert await vm.register_vm_dns(shell, "web", "192.168.122.50", "convocate.internal", report=report,
                                    hosts_path=str(hosts))
    assert hosts.read_text() == f"192.168.122.50 web.convocate.internal web # convocate-vm web\n{STATUS_LINE}\n"
    assert hosts.stat().st_mode & 0o777 == 0o640  # mode kept
    assert not await vm.register_vm_dns(shell, "web", "192.168.122.50", "convocate.internal", report=report,
                                        hosts_path=str(hosts))
    assert report.changes == 1 and not [p for p in hosts.parent.iterdir() if p.name.startswith(".convocate-host")]
    with pytest.raises(Conflict, match="build"):
        await vm.register_vm_dns(shell, "build", "192.168.122.9", "convocate.internal", report=report,
                                 hosts_path=str(hosts))
    with pytest.raises(HostError, match="not a shell host"):
        await vm.register_vm_dns(shell, "web", "10.0.0.1", "", report=report, hosts_path=str(tmp_path / "no/hosts"))
    assert await vm.read_cluster_domain(shell, paths) == vm.DEFAULT_DOMAIN
    paths.shell_domain_file.parent.mkdir(parents=True)
    paths.shell_domain_file.write_text("Lab.Example\n")
    assert await vm.read_cluster_domain(shell, paths) == "lab.example"


# --- against libvirt's test driver ---------------------------------------------------------------------------
@needs_virsh
async def test_probe_reads_capacity_and_pledges_of_the_default_test_driver() -> None:
    host = await vm.probe_hypervisor(LocalTarget(), vm.Virsh(LocalTarget(), "test:///default"), "/default-pool")
    assert (host.capacity.total.cpus, host.capacity.source) == (16, "virsh nodeinfo")
    assert host.capacity.total.disk_bytes == 100 * GIB and "default-pool" in host.capacity.disk_source
    test = host.domain("test")
    assert (test.vcpus, test.memory_kib, test.recorded) == (2, 8 * 1024 * 1024, None)
    assert host.pledged.cpus == 2 and host.pledged.disk_bytes > 0  # the driver reports a 1 TiB disk


@needs_virsh
@pytest.mark.parametrize(("axis", "node", "ask"), [
    ("CPU", dict(cpus=4), dict(cpus=1)),           # 3 pledged + 1 > 3.6
    ("RAM", dict(memory_gib=8), dict(ram="2G")),   # 6 GiB pledged + 2 GiB > 7.2 GiB
    ("disk", dict(), dict(osdisk=6, datadisk=6)),  # 80 GiB pledged + 12 GiB > 90 GiB of the 100 GiB pool
])
async def test_create_vm_refuses_past_90_percent_before_changing_anything(
        ssh_key: str, tmp_path: Path, axis: str, node: dict, ask: dict) -> None:
    pool = tmp_path / "pool"
    old = other_domain("old", vcpus=3, memory_gib=6, disks=[f"{pool}/old.qcow2"])  # shut off: it still pledges
    uri = write_node(tmp_path / "node.xml", **{"cpus": 16, "memory_gib": 32, **node},
                     pool_dir=pool, volumes=[("old.qcow2", 80)], domains=[old])
    target = RecordingTarget()
    spec = spec_for(ssh_key, "https://example.org/never-downloaded.img", pool, **{"cpus": 1, "ram": "1G",
                                                                                 "osdisk": 2, "datadisk": 1, **ask})
    with pytest.raises(AdmissionDenied) as caught:
        await vm.create_vm(target, spec, uri=uri, install_stack=True, **quick(tmp_path))
    message = str(caught.value)
    assert f"nothing was changed: {axis} asked" in message and "pledged" in message and "allowed" in message
    assert len(message.split("; ")) == 1  # only the axis that is full
    assert target.changes() == [] and not pool.exists()
    assert not any("dpkg-query" in argv for argv in target.commands)  # not even the package check


@needs_virsh
async def test_a_host_without_libvirt_is_measured_from_proc_and_refused_before_install(
        ssh_key: str, tmp_path: Path) -> None:
    if os.path.exists("/usr/sbin/libvirtd") or os.path.exists("/usr/sbin/virtqemud"):
        pytest.skip("libvirt's daemon is installed here: this is not a host without libvirt")
    target = RecordingTarget()
    host = await vm.probe_hypervisor(target, vm.Virsh(target, "qemu:///system"), str(tmp_path / "pool"))
    assert not host.libvirt and host.domains == ()
    assert host.capacity.total.cpus == len(os.sched_getaffinity(0))
    with open("/proc/meminfo") as f:
        assert host.capacity.total.memory_kib == parse_meminfo(f.read())["MemTotal"]
    assert host.capacity.disk_source == f"filesystem of {tmp_path / 'pool'} (df)"
    spec = spec_for(ssh_key, "https://example.org/x.img", tmp_path / "pool", cpus=1024)
    with pytest.raises(AdmissionDenied, match="CPU asked 1024 vCPUs, pledged 0 vCPUs"):
        await vm.create_vm(target, spec, uri="qemu:///system", install_stack=True, **quick(tmp_path))
    assert target.changes() == []


@needs_tools
async def test_create_vm_defines_and_starts_the_domain_then_keeps_it(ssh_key: str, base_image: Path,
                                                                      tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    old = other_domain("old", vcpus=4, memory_gib=8, disks=[f"{pool}/old.qcow2"])
    node = dict(cpus=16, memory_gib=32, pool_dir=pool, volumes=[("old.qcow2", 40)])
    uri = write_node(tmp_path / "node.xml", **node, domains=[old])
    spec = spec_for(ssh_key, base_image, pool)
    layout = vm.vm_layout(spec)
    target = RecordingTarget()

    result = await vm.create_vm(target, spec, uri=uri, install_stack=False, **quick(tmp_path))

    assert (result.name, result.ip, result.ip_source, result.created) == ("web", "192.168.122.50", "static", True)
    steps = "\n".join(result.report.steps)
    assert "admission: CPU 4 vCPUs pledged + 2 vCPUs asked of 14.4 vCPUs allowed" in steps
    assert "storage pool images" in steps
    assert "domain web defined, started and marked autostart" in steps
    assert "define /dev/stdin ; start web ; autostart web" in " ; ".join(target.virsh_commands())
    for path, gib in ((layout.os_disk, 2), (layout.data_disk, 1)):
        info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", path], capture_output=True, text=True,
                                         check=True).stdout)
        assert (info["format"], info["virtual-size"]) == ("qcow2", gib * GIB)
    iso = subprocess.run(["isoinfo", "-d", "-i", layout.seed_iso], capture_output=True, text=True, check=True).stdout
    assert "Volume id: cidata" in iso
    for name, data in vm.seed_files(spec).items():
        extracted = subprocess.run(["isoinfo", "-J", "-i", layout.seed_iso, "-x", f"/{name}"], capture_output=True,
                                   check=True).stdout
        assert extracted == data
    assert not [p.name for p in pool.iterdir() if ".part" in p.name]

    # The XML the executor fed to `virsh define` is accepted by libvirt and gives the domain asked for.
    out = virsh_session(uri, "define /dev/stdin ; dumpxml web ; dominfo web ; start web ; domstate web",
                        input=vm.domain_xml(spec))
    defined = ET.fromstring(out[out.index("<domain"):out.index("</domain>") + len("</domain>")])
    disks = [(d.find("target").get("dev"), d.find("target").get("bus"), d.find("source").get("file"))
             for d in defined.iterfind("devices/disk[@device='disk']")]
    assert disks == [("vda", "virtio", layout.os_disk), ("vdb", "virtio", layout.data_disk)]
    info = preflight.parse_fields(out[out.index("</domain>"):])
    assert (info["CPU(s)"], info["Max memory"]) == ("2", "2097152 KiB")
    assert out.rstrip().endswith("running")

    # A second run, against a hypervisor that holds the domain the first run defined, changes nothing.
    again_uri = write_node(tmp_path / "node-after.xml", **node, domains=[old, vm.domain_xml(spec)])
    again = RecordingTarget()
    second = await vm.create_vm(again, spec, uri=again_uri, install_stack=False, **quick(tmp_path))
    assert (second.created, second.ip, second.report.changes) == (False, "192.168.122.50", 0)
    assert "domain web kept: defined with the same spec" in "\n".join(second.report.steps)
    assert again.changes() == []


@needs_tools
async def test_create_vm_refuses_a_domain_of_that_name_with_another_spec(ssh_key: str, base_image: Path,
                                                                         tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    before = spec_for(ssh_key, base_image, pool, cpus=2)
    foreign = other_domain("web", vcpus=2, memory_gib=2, disks=[], running=True)
    for domains, words in (([vm.domain_xml(before)], "another spec (cpus: 2 -> 4);"),
                           ([foreign], "was not made by convocate-host create-vm")):
        uri = write_node(tmp_path / "node.xml", pool_dir=pool, domains=domains)
        target = RecordingTarget()
        with pytest.raises(Conflict, match=words.replace("(", r"\(").replace(")", r"\)")):
            await vm.create_vm(target, spec_for(ssh_key, base_image, pool, cpus=4), uri=uri, install_stack=False,
                               **quick(tmp_path))
        assert target.changes() == [] and not pool.exists()


@needs_tools
async def test_create_vm_never_overwrites_a_disk_of_another_size(ssh_key: str, base_image: Path,
                                                                 tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    pool.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(pool / "web-data.qcow2"), "5G"], check=True)
    uri = write_node(tmp_path / "node.xml", pool_dir=pool)
    with pytest.raises(Conflict, match="web-data.qcow2 already exists with a virtual size of 5 GiB"):
        await vm.create_vm(RecordingTarget(), spec_for(ssh_key, base_image, pool), uri=uri, install_stack=False,
                           **quick(tmp_path))
    big = tmp_path / "big.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(big), "3G"], check=True)
    with pytest.raises(BadRequest, match="--osdisk 2 GiB is smaller than the image .* give at least 3 GiB"):
        await vm.create_vm(RecordingTarget(), spec_for(ssh_key, big, tmp_path / "p2", osdisk=2), uri=uri,
                           install_stack=False, **quick(tmp_path))
    assert not (tmp_path / "p2" / "web-os.qcow2").exists()


@needs_virsh
async def test_dhcp_address_comes_from_the_lease_of_the_vms_nic(ssh_key: str, tmp_path: Path) -> None:
    spec = spec_for(ssh_key, "/i.img", tmp_path, ip=None)
    uri = write_node(tmp_path / "node.xml", pool_dir=tmp_path, domains=[vm.domain_xml(spec)])
    ip, source = await vm.vm_address(vm.Virsh(LocalTarget(), uri), spec, timeout_s=0)
    assert source == "DHCP lease" and ip is not None and ip.startswith("192.168.122.")
    started = asyncio.get_running_loop().time()
    none, _ = await vm.vm_address(vm.Virsh(LocalTarget(), "test:///default"), spec, timeout_s=0.2, interval_s=0.1)
    assert none is None and asyncio.get_running_loop().time() - started < 5  # bounded wait


@needs_tools
async def test_create_vm_waits_for_another_run_on_the_same_hypervisor(ssh_key: str, base_image: Path,
                                                                      tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    uri = write_node(tmp_path / "node.xml", pool_dir=pool)
    target = RecordingTarget()
    async with vm.hypervisor_lock(LocalTarget(), quick(tmp_path)["lock_path"]):
        with pytest.raises(HostError, match="another create-vm still holds .* after 0.3 s"):
            await vm.create_vm(target, spec_for(ssh_key, base_image, pool), uri=uri, install_stack=False,
                               lock_wait_s=0.3, **quick(tmp_path))
    assert target.commands == [] and not pool.exists()  # refused before even probing
    result = await vm.create_vm(target, spec_for(ssh_key, base_image, pool), uri=uri, install_stack=False,
                                lock_wait_s=5, **quick(tmp_path))
    assert result.created  # released when the holder left its block


@pytest.mark.skipif(not shutil.which("curl"), reason="curl missing")
async def test_image_download_is_kept_only_when_sha256sums_agrees(tmp_path: Path) -> None:
    """The download script, fed a file:// URL (no network here): SHA256SUMS beside the image decides."""
    source = tmp_path / "mirror"
    source.mkdir()
    (source / "noble.img").write_bytes(b"cloud image bytes")
    digest = hashlib.sha256(b"cloud image bytes").hexdigest()
    target = LocalTarget()
    dest = tmp_path / "noble.img"
    url = f"file://{source}/noble.img"
    unchecked = await target.sh(vm_create._DOWNLOAD_SCRIPT, url, str(dest))
    assert dest.read_bytes() == b"cloud image bytes" and "verified" not in unchecked.text
    dest.unlink()
    (source / "SHA256SUMS").write_text(f"{digest} *noble.img\n{'0' * 64} *other.img\n")
    assert "verified" in (await target.sh(vm_create._DOWNLOAD_SCRIPT, url, str(dest))).text and dest.exists()
    dest.unlink()
    (source / "SHA256SUMS").write_text(f"{'0' * 64} *noble.img\n")
    bad = await target.sh(vm_create._DOWNLOAD_SCRIPT, url, str(dest), check=False)
    assert bad.returncode == 5 and b"SHA256SUMS says" in bad.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mirror"]  # no image, no partial file


# --- the command line ----------------------------------------------------------------------------------------
def _shell_host_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Paths:
    """A shell host's root under ``tmp_path``: the DNS hosts file (holding :data:`STATUS_LINE`) and the domain
    ``lab.example``; ``CONVOCATE_ROOT`` points at it and create-vm's lock is ``tmp_path/create-vm.lock``."""
    root = tmp_path / "root"
    paths = Paths(root)
    paths.dnsmasq_hosts.parent.mkdir(parents=True)
    paths.dnsmasq_hosts.write_text(f"{STATUS_LINE}\n")
    paths.shell_domain_file.parent.mkdir(parents=True)
    paths.shell_domain_file.write_text("lab.example\n")
    monkeypatch.setenv("CONVOCATE_ROOT", str(root))
    monkeypatch.setattr(vm_create, "LOCK_PATH", str(tmp_path / "create-vm.lock"))
    return paths


def test_parser_and_spec_from_args(ssh_key: str, tmp_path: Path) -> None:
    key = tmp_path / "id_ed25519.pub"
    key.write_text(ssh_key + "\n")
    parser = argparse.ArgumentParser()
    vm.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["create-vm", "--hypervisor", "hv1", "--name", "web", "--cpu", "2", "--ram", "4G",
                              "--osdisk", "20", "--datadisk", "50", "--ssh-key", str(key), "--ip", "10.0.0.9/24",
                              "--network", "bridge:br0", "--shell-host", "shell1"])
    assert callable(args.func) and args.uri == vm.DEFAULT_URI and not args.no_install
    spec = vm.spec_from_args(args, "lab.example")
    assert (spec.name, spec.cpus, spec.ram_mib, spec.osdisk_gib, spec.datadisk_gib) == ("web", 2, 4096, 20, 50)
    assert spec.network == vm.NetworkRef("bridge", "br0") and spec.domain == "lab.example"
    args.ssh_key = tmp_path / "missing.pub"
    with pytest.raises(ConfigError, match="missing.pub"):
        vm.spec_from_args(args)


@needs_tools
def test_command_line_creates_the_vm_and_registers_its_dns_name(ssh_key: str, base_image: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """``create-vm --hypervisor local --shell-host local`` as the operator types it (the test driver as libvirt)."""
    paths = _shell_host_root(tmp_path, monkeypatch)
    key = tmp_path / "id_ed25519.pub"
    key.write_text(ssh_key + "\n")
    pool = tmp_path / "pool"
    uri = write_node(tmp_path / "node.xml", pool_dir=pool)
    parser = argparse.ArgumentParser()
    vm.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["create-vm", "--hypervisor", "local", "--shell-host", "local", "--uri", uri,
                              "--no-install", "--name", "web", "--cpu", "2", "--ram", "2G", "--osdisk", "2",
                              "--datadisk", "1", "--image", str(base_image), "--ssh-key", str(key),
                              "--ip", "192.168.122.50/24", "--pool-dir", str(pool)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "local host: changed domain web defined, started and marked autostart" in out
    assert "local host: ok      VM web address 192.168.122.50 (static)" in out
    assert "create-vm on local host: 5 change(s)" in out
    assert "192.168.122.50 web.lab.example web # convocate-vm web" in paths.dnsmasq_hosts.read_text()
    assert STATUS_LINE in paths.dnsmasq_hosts.read_text()
    assert '"fqdn": "web.lab.example"' in (pool / "web-cloudinit" / "user-data").read_text()


# --- --dry-run ---------------------------------------------------------------------------------------------
@pytest.fixture
def dry_run_mode() -> Iterator[None]:
    """Reports made in the test print as a dry run's (``would``/``plan``); the mode is reset afterwards."""
    reports.configure(dry_run=True)
    try:
        yield
    finally:
        reports.configure()


def tree_state(root: Path) -> dict[str, tuple]:
    """Every entry under ``root``: kind, mode, size, mtime and the SHA-256 of a file, by relative path."""
    state = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        state[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns, digest)
    return state


def dry_report() -> LiveReport:
    return LiveReport("hv", io.StringIO())


@needs_tools
async def test_create_vm_dry_run_runs_only_reads_and_lists_every_change(ssh_key: str, base_image: Path,
                                                                        tmp_path: Path, dry_run_mode: None) -> None:
    pool = tmp_path / "pool"
    old = other_domain("old", vcpus=4, memory_gib=8, disks=[f"{pool}/old.qcow2"])
    uri = write_node(tmp_path / "node.xml", pool_dir=pool, volumes=[("old.qcow2", 40)], domains=[old])
    spec = spec_for(ssh_key, base_image, pool)
    layout = vm.vm_layout(spec)
    recorder = RecordingTarget()
    dry = DryRunTarget(recorder)
    report = dry_report()
    dry.on_plan = report.planned
    before = tree_state(tmp_path)

    result = await vm.create_vm(dry, spec, uri=uri, install_stack=False, report=report, **quick(tmp_path))

    assert tree_state(tmp_path) == before and not pool.exists()  # no disk, no seed, no lock file
    assert recorder.changes() == []  # every command that ran on the host only read
    assert {c.split()[0] for c in recorder.virsh_commands()} <= READ_ONLY_VIRSH
    assert not any("flock" in argv for argv in recorder.commands)
    assert (result.created, result.ip, result.stopped) == (True, "192.168.122.50", False)
    would = [line for kind, line in report.entries if kind == "changed"]
    assert would == [f"pool directory {pool} created", f"OS disk {layout.os_disk} created (2 GiB qcow2)",
                     f"data disk {layout.data_disk} created (1 GiB qcow2)",
                     f"cloud-init seed {layout.seed_iso} built (meta-data, network-config, user-data)",
                     "domain web defined, started and marked autostart (2 vCPUs, 2048 MiB, vda 2 GiB, vdb 1 GiB at"
                     " /var, NIC on default)"]
    assert report.changes == 5 and report.summary() == "5 change(s) would be made; nothing was changed (dry run)"
    plan = [line for kind, line in report.entries if kind == "planned"]
    assert plan[0].startswith("would stream into: flock -w 600 ")  # the lock a real run takes, not taken
    assert f"would make directory {pool} (mode 0711, root:root)" in plan
    assert f"would make directory {layout.seed_dir} (mode 0700, root:root)" in plan
    assert any(line.startswith(f"would write {layout.seed_dir}/user-data (") for line in plan)
    assert any("qemu-img convert" in line and layout.os_disk in line for line in plan)
    assert any("qemu-img create" in line and layout.data_disk in line for line in plan)
    assert any("genisoimage" in line and layout.seed_iso in line for line in plan)
    assert plan[-1].startswith("would run: env LC_ALL=C virsh -c ") and \
        plan[-1].endswith("'define /dev/stdin ; start web ; autostart web' (defining and starting domain web)")
    assert virsh_session(uri, "list --all --name").split() == ["old"]  # the node file still defines only "old"

    # A DHCP VM: the dry run started no VM, so it waits for no lease and says so.
    dhcp = spec_for(ssh_key, base_image, pool, ip=None)
    recorder.commands.clear()
    report = dry_report()
    result = await vm.create_vm(DryRunTarget(recorder), dhcp, uri=uri, install_stack=False, report=report,
                                ip_timeout_s=60, lock_path=str(tmp_path / "create-vm.lock"))
    assert (result.ip, result.created) == (None, True)
    assert report.entries[-1] == ("note", messages.VM_DRY_RUN_NO_LEASE.format(name="web", seconds=60))
    assert not any("domifaddr" in c for c in recorder.virsh_commands())
    assert tree_state(tmp_path) == before


@needs_virsh
async def test_create_vm_dry_run_stops_with_a_note_where_it_would_need_a_download(
        ssh_key: str, tmp_path: Path, dry_run_mode: None) -> None:
    pool = tmp_path / "pool"
    uri = write_node(tmp_path / "node.xml", pool_dir=pool)
    recorder = RecordingTarget()
    dry = DryRunTarget(recorder)
    report = dry_report()
    dry.on_plan = report.planned
    spec = spec_for(ssh_key, "https://example.org/images/noble.img", pool)
    result = await vm.create_vm(dry, spec, uri=uri, install_stack=False, report=report, **quick(tmp_path))
    image = f"{pool}/noble.img"
    assert (result.stopped, result.ip, result.created) == (True, None, False)
    assert report.entries[-1] == ("note", messages.VM_DRY_RUN_STOPS_AT_IMAGE.format(image=image))
    assert ("changed", f"cloud image {image} downloaded from https://example.org/images/noble.img (checked against"
            " the SHA256SUMS beside it, if the server publishes one)") in report.entries
    assert any(kind == "planned" and "curl" in line for kind, line in report.entries)
    assert not any("curl" in " ".join(argv) for argv in recorder.commands)  # nothing was fetched
    assert recorder.changes() == [] and not pool.exists()


@needs_virsh
async def test_create_vm_dry_run_stops_with_a_note_where_it_would_install_the_kvm_stack(
        ssh_key: str, tmp_path: Path, dry_run_mode: None) -> None:
    installed = vm.parse_dpkg_installed(subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package} ${db:Status-Status}\n", *vm.KVM_PACKAGES], capture_output=True,
        text=True).stdout)
    missing = [p for p in vm.KVM_PACKAGES if p not in installed]
    if not missing:
        pytest.skip("every KVM/libvirt package is installed here: there is nothing a dry run would install")
    uri = write_node(tmp_path / "node.xml", pool_dir=tmp_path / "pool")
    recorder = RecordingTarget()  # refuses apt-get and dpkg: the dry run must not reach them
    dry = DryRunTarget(recorder)
    report = dry_report()
    dry.on_plan = report.planned
    result = await vm.create_vm(dry, spec_for(ssh_key, "/nonexistent.img", tmp_path / "pool"), uri=uri,
                                install_stack=True, report=report, **quick(tmp_path))
    assert result.stopped and report.entries[-1] == ("note", messages.VM_DRY_RUN_STOPS_AT_STACK)
    assert ("changed", "KVM/libvirt stack installed: " + ", ".join(missing)) in report.entries
    assert any(kind == "planned" and "apt-get install" in line for kind, line in report.entries)
    assert recorder.changes() == [] and not (tmp_path / "pool").exists()


def _create_vm_args(tmp_path: Path, base_image: Path, ssh_key: str, *extra: str) -> list[str]:
    key = tmp_path / "id_ed25519.pub"
    key.write_text(ssh_key + "\n")
    pool = tmp_path / "pool"
    return ["create-vm", "--hypervisor", "local", "--uri", write_node(tmp_path / "node.xml", pool_dir=pool),
            "--no-install", "--name", "web", "--cpu", "2", "--ram", "2G", "--osdisk", "2", "--datadisk", "1",
            "--image", str(base_image), "--ssh-key", str(key), "--ip", "192.168.122.50/24", "--pool-dir",
            str(pool), *extra]


@needs_tools
def test_command_line_dry_run_changes_nothing_and_lists_the_domain_disks_seed_and_dns_record(
        ssh_key: str, base_image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``create-vm --dry-run --shell-host local`` as the operator types it: every file, the lock and the DNS stay."""
    paths = _shell_host_root(tmp_path, monkeypatch)
    lock = tmp_path / "create-vm.lock"
    argv = _create_vm_args(tmp_path, base_image, ssh_key, "--shell-host", "local", "--dry-run")
    uri = argv[argv.index("--uri") + 1]
    domains = virsh_session(uri, "list --all --name")
    before = tree_state(tmp_path)
    try:
        assert cli.main(argv) == 0
    finally:
        reports.configure()
    out = capsys.readouterr().out.splitlines()

    assert tree_state(tmp_path) == before  # disks, seed, node file, DNS hosts file: not one byte or mtime
    assert not lock.exists() and not (tmp_path / "pool").exists()
    assert virsh_session(uri, "list --all --name") == domains
    pool = tmp_path / "pool"
    for line in (f"local host: would   OS disk {pool}/web-os.qcow2 created (2 GiB qcow2)",
                 f"local host: would   data disk {pool}/web-data.qcow2 created (1 GiB qcow2)",
                 f"local host: would   cloud-init seed {pool}/web-seed.iso built (meta-data, network-config, user-data)",
                 "local host: ok      VM web address 192.168.122.50 (static)",
                 "create-vm on local host: 5 change(s) would be made; nothing was changed (dry run)",
                 f"local host: would   DNS record 192.168.122.50 web.lab.example web written to {paths.dnsmasq_hosts}",
                 "create-vm on local host: 1 change(s) would be made; nothing was changed (dry run)"):
        assert line in out, out
    assert any(line.startswith("local host: would   domain web defined, started and marked autostart") for line in out)
    assert any(line.startswith(f"local host: plan    would write {paths.dnsmasq_hosts} (") for line in out)
    assert any(line.startswith("local host: plan    would run: env LC_ALL=C virsh") and "define /dev/stdin" in line
               for line in out)


@needs_tools
def test_command_line_dry_run_json_is_one_document(ssh_key: str, base_image: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """With --json stdout is one JSON document, also without --shell-host (that remark is a note in it)."""
    monkeypatch.setattr(vm_create, "LOCK_PATH", str(tmp_path / "create-vm.lock"))
    argv = _create_vm_args(tmp_path, base_image, ssh_key, "--dry-run", "--json")
    before = tree_state(tmp_path)
    try:
        assert cli.main(argv) == 0
    finally:
        reports.configure()
    captured = capsys.readouterr()
    document = json.loads(captured.out)  # the whole of stdout
    assert tree_state(tmp_path) == before
    assert (document["ok"], document["command"], document["dry_run"], document["changes"]) == \
        (True, "create-vm", True, 5)
    [report] = document["hosts"]
    assert report["summary"] == messages.DRY_RUN_SUMMARY.format(count=5)
    steps = report["steps"]
    assert {"status": "note", "line": messages.VM_NO_SHELL_HOST.format(name="web")} in steps
    changed = [s["line"] for s in steps if s["status"] == "changed"]
    assert [line.split(" ")[0] for line in changed] == ["pool", "OS", "data", "cloud-init", "domain"]
    assert sum(s["status"] == "planned" for s in steps) >= 8
