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

The modules, pure first: :mod:`~convocate_host.vm.preflight` (capacity, pledges, admission and
the parsers of what virsh, df, dpkg-query and qemu-img print), :mod:`~convocate_host.vm.spec`
(the VM's spec, checked), :mod:`~convocate_host.vm.domain` (the libvirt domain XML, written and
read back), :mod:`~convocate_host.vm.seed` (the cloud-init NoCloud seed); then the ones that
drive a :class:`~convocate_host.target.Target` around them: :mod:`~convocate_host.vm.dns` (the
VM's record in the shell host's hosts file; not :mod:`convocate.dns`), :mod:`~convocate_host.vm.virsh`
(the ``virsh`` executor and the read-only probe), :mod:`~convocate_host.vm.create` (the create
flow) and :mod:`~convocate_host.vm.cli` (the command line). Every ``virsh`` command goes to the
libvirt URI given (``qemu:///system`` by default), so tests point them at libvirt's ``test``
driver. Rules come from libvirt's Domain XML format (https://libvirt.org/formatdomain.html),
the test driver's node file format (``examples/xml/test/testnode.xml`` in libvirt), and
cloud-init's NoCloud datasource and module docs (``cc_disk_setup``, ``cc_mounts``,
``cc_write_files``, ``cc_runcmd``, ``cc_power_state_change``, network config version 2).

This package re-exports the names ``convocate-host``'s command line and the tests use, so
callers keep ``from convocate_host import vm``.
"""

from __future__ import annotations

from convocate_host.vm.cli import add_parser, command, spec_from_args
from convocate_host.vm.create import KVM_PACKAGES, VMResult, create_vm, hypervisor_lock
from convocate_host.vm.dns import (
    DEFAULT_DOMAIN,
    DNS_MARKER,
    read_cluster_domain,
    register_vm_dns,
    render_vm_record,
    vm_record,
)
from convocate_host.vm.domain import METADATA_NS, domain_xml, parse_domain_xml
from convocate_host.vm.preflight import (
    DiskRef,
    DomainConfig,
    HostCapacity,
    Hypervisor,
    Resources,
    check_admission,
    parse_capacity,
    parse_df,
    parse_domifaddr,
    parse_dpkg_installed,
    parse_image_info,
    parse_nodeinfo,
    parse_pool_xml,
)
from convocate_host.vm.seed import DATA_LABEL, meta_data, network_config, seed_files, user_data
from convocate_host.vm.spec import (
    DEFAULT_NETWORK,
    DEFAULT_POOL_DIR,
    UBUNTU_CLOUD_IMAGE,
    NetworkRef,
    VMLayout,
    VMSpec,
    make_spec,
    parse_network,
    parse_ram,
    spec_differences,
    spec_metadata,
    vm_layout,
)
from convocate_host.vm.virsh import DEFAULT_URI, HypervisorError, Virsh, probe_hypervisor, vm_address

__all__ = [
    "DATA_LABEL", "DEFAULT_DOMAIN", "DEFAULT_NETWORK", "DEFAULT_POOL_DIR", "DEFAULT_URI", "DNS_MARKER",
    "KVM_PACKAGES", "METADATA_NS", "UBUNTU_CLOUD_IMAGE",
    "DiskRef", "DomainConfig", "HostCapacity", "Hypervisor", "HypervisorError", "NetworkRef", "Resources",
    "VMLayout", "VMResult", "VMSpec", "Virsh",
    "add_parser", "check_admission", "command", "create_vm", "domain_xml", "hypervisor_lock", "make_spec",
    "meta_data", "network_config", "parse_capacity", "parse_df", "parse_domain_xml", "parse_domifaddr",
    "parse_dpkg_installed", "parse_image_info", "parse_network", "parse_nodeinfo", "parse_pool_xml", "parse_ram",
    "probe_hypervisor", "read_cluster_domain", "register_vm_dns", "render_vm_record", "seed_files",
    "spec_differences", "spec_from_args", "spec_metadata", "user_data", "vm_address", "vm_layout", "vm_record",
]
