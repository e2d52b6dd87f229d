"""``convocate-host create-vm``'s command line: its parser, the spec it asks for, and the command that runs it.

The parser only builds arguments; :func:`command` opens the hypervisor and the shell host, runs
:func:`~convocate_host.vm.create.create_vm` and then :func:`~convocate_host.vm.dns.register_vm_dns`;
``convocate-host``'s ``run_main`` turns the errors they raise into a message and an exit code.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from convocate.common import messages
from convocate.common.errors import ConfigError
from convocate.common.paths import Paths
from convocate_host.opentarget import add_ssh_options, open_target
from convocate_host.report import report_for
from convocate_host.vm.create import create_vm
from convocate_host.vm.dns import DEFAULT_DOMAIN, read_cluster_domain, register_vm_dns
from convocate_host.vm.spec import DEFAULT_NETWORK, DEFAULT_POOL_DIR, UBUNTU_CLOUD_IMAGE, VMSpec, make_spec
from convocate_host.vm.virsh import DEFAULT_URI, IP_WAIT_S


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
