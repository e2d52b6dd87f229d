"""A VM's DNS record on the shell host: one line of the cluster's dnsmasq hosts file (DESIGN §5).

Not :mod:`convocate.dns`, which is status-serve's block of session records in the same file:
create-vm's lines carry their own marker (:data:`DNS_MARKER`), so status-serve keeps them as
lines it does not own. :func:`render_vm_record` is the pure edit; :func:`register_vm_dns` applies
it on the shell host.
"""

from __future__ import annotations

import hashlib
import posixpath

from convocate.common import messages
from convocate.common.errors import Conflict
from convocate.common.hostsetup import StepReport
from convocate.common.paths import Paths
from convocate_host.target import ABSENT, FileChanged, HostError, Target

#: The cluster's DNS domain when the shell host names none; the same default as status-serve's
#: (``convocate.status_server.DEFAULT_DOMAIN``), which convocate_host may not import.
DEFAULT_DOMAIN = "convocate.internal"
#: Marks the hosts-file lines create-vm owns; status-serve's own marker is ``# convocate <agent>
#: <uuid>``, so status-serve keeps these lines as records it does not own (DESIGN §5).
DNS_MARKER = "# convocate-vm"


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
