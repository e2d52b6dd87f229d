"""The libvirt domain XML of a VM, and reading a domain's XML back (https://libvirt.org/formatdomain.html).

:func:`domain_xml` writes the domain create-vm defines, with the spec it was made from in
``<metadata>``; :func:`parse_domain_xml` reads what any defined domain pledges (vCPUs, memory,
disks) and that record, if create-vm made it. Pure: no I/O.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from convocate_host.vm.preflight import KIB, DiskRef, DomainConfig, parse_size
from convocate_host.vm.spec import VMSpec, spec_metadata, vm_layout

#: Namespace of the ``<metadata>`` element that records the spec a domain was made from. libvirt
#: keeps one element per custom namespace under ``<metadata>`` (formatdomain, "General metadata").
METADATA_NS = "urn:x-convocate:create-vm:1"

ET.register_namespace("convocate", METADATA_NS)


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
                        memory_kib=parse_size(memory.text.strip(), memory.get("unit", "KiB")) // KIB
                        if memory is not None and memory.text else 0,
                        disks=tuple(disks), recorded=dict(ours.attrib) if ours is not None else None)
