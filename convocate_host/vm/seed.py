"""The cloud-init NoCloud seed of a VM: ``meta-data``, ``user-data`` and ``network-config``.

The seed ISO (volume label ``cidata``) carries them to the VM's first boot (cloud-init docs:
NoCloud datasource; ``cc_disk_setup``, ``cc_mounts``, ``cc_write_files``, ``cc_runcmd``,
``cc_power_state_change``; network config version 2). Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import json

from convocate_host.vm.spec import VMSpec, spec_metadata

#: ext4 label of the data disk's filesystem (at most 16 bytes, mke2fs(8) -L).
DATA_LABEL = "convocate-var"


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
