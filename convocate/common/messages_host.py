"""Message texts of ``convocate-host``: targets, log forwarding (rsyslog over TLS, its PKI),
create-vm, command lines (convocate/common/cli.py), ``--dry-run`` and the Claude Code pin.

Each constant is a ``str.format`` template; the placeholders are named. Import them through
:mod:`convocate.common.messages`.
"""

# --- convocate-host: targets ---------------------------------------------------------
HOST_COMMAND_FAILED = "{host}: {what} failed: `{command}` exited with status {status}:\n{detail}"
HOST_COMMAND_TIMEOUT = "{host}: `{command}` did not finish within {seconds:g} s"
HOST_SUDO_REQUIRED = (
    "{host}: {user} cannot run sudo without a password ({detail}). convocate-host needs root there:"
    " log in as root, or give {user} NOPASSWD sudo, e.g. the line '{user} ALL=(ALL) NOPASSWD:ALL' in"
    " /etc/sudoers.d/convocate-host (visudo -f)"
)
HOST_SSH_HOST_KEY = (
    "{host}: the host key is not the one in {known_hosts} ({detail}). If the host was reinstalled, check its"
    " key out of band, then fix known_hosts (ssh-keygen -R HOST, ssh-keyscan); convocate-host never trusts a"
    " new key by itself"
)
HOST_SSH_UNREACHABLE = "{host}: cannot log in over SSH: {detail}"
IMAGE_DIGEST_MISMATCH = (
    "image transfer of {tag} is corrupt: the {size} bytes received have SHA-256 {got}, the sender announced"
    " {expected}; nothing was loaded"
)
HOST_NO_DEB = (
    "no {package}_*.deb in {directory}: build the packages with ./build.sh debs (they land in build/debs)"
    " and pass --debs DIR"
)
HOST_LOCAL_REBOOT = (
    "a newer kernel is installed but convocate-host never reboots the machine it runs on: reboot it yourself"
)
HOST_REBOOT_TIMEOUT = "{host} did not come back within {seconds:g} s after the reboot"
HOST_NO_IMAGE = (
    "{host} has no image {tag}: build it there with `convocate install --image` (or name another with --image)"
)
HOST_DRAIN_INCOMPLETE = (
    "agent {agent} cannot be drained, so it was not updated (it takes new sessions again): {sessions}."
    " Free capacity elsewhere (`convocate place`), or update without --drain: running sessions keep running"
    " through an agent's restart"
)
HOST_LEFT_DRAINING = (
    "\nagent {agent} stays draining (it takes no new session): `convocate undrain {agent}` once it is healthy"
)
HOST_AGENT_UNHEALTHY = (
    "agent {agent} is not healthy as seen from the shell host {host} after {seconds:g} s: {status}"
    " (on the agent host: systemctl status convocate-agent; journalctl -u convocate-agent)"
)

# --- convocate-host: log forwarding (rsyslog over TLS, its PKI) ---------------------------
BAD_AGENT_ID = "agent ID {value!r} is not 8 characters of a-z and 0-9 (the rule of /etc/convocate-agent/agent-id)"
BAD_CERT_HOST_NAME = "{value!r} is not a valid DNS name (RFC 1123 labels of a-z, 0-9 and '-', at most 253 characters)"
BAD_CERT_IP = "{value!r} is not an IPv4 or IPv6 address"
BAD_CERT_VALIDITY = "certificate validity must be a positive number of days, got {value!r}"
BAD_CERT_TIME = "the issue time {value} has no time zone"
BAD_PEM = "{what}: not a readable PEM {kind} ({detail})"
NOT_P256 = "{what}: not an ECDSA P-256 private key; the rsyslog PKI uses P-256 only"
CA_KEY_MISMATCH = (
    "the rsyslog CA key does not belong to the rsyslog CA certificate; restore the pair, or remove both to"
    " create a new CA (every agent's client certificate must then be reissued with init-agent)"
)
CA_INVALID = (
    "the rsyslog CA certificate cannot be used: {problems}; remove the CA's files to create a new CA"
    " (every agent's client certificate must then be reissued with init-agent)"
)
CA_HALF_PRESENT = (
    "the rsyslog CA is half there: {missing} is missing. Restore it, or remove the CA's files to create a new"
    " CA (every agent's client certificate must then be reissued with init-agent)"
)
CA_EXPIRED = "the rsyslog CA expired on {when}: it cannot issue certificates; remove it to create a new CA"
BAD_RSYSLOG_VALUE = "rsyslog {field}: {value!r} {rule}"
LOG_PORTS_EXHAUSTED = ("no free TLS log port for agent {agent} in {first}..{last}: every one is another agent's "
                       "or in use on the shell host; give init-shell and init-agent another --log-port")
# Why init-shell / init-agent reissue a certificate (or warn about the CA): one reason each.
CERT_MISSING = "no certificate"
CERT_KEY_MISSING = "no private key"
CERT_KEY_MISMATCH = "the private key does not match the certificate"
CERT_NOT_FROM_CA = "not issued by the cluster CA"
CERT_EXPIRES = "expires {date} (within {days:g} days)"
CERT_LACKS_USAGE = "extendedKeyUsage lacks {usage}"
CERT_NAMES = "names {have}, not {want}"
CERT_NEW_CA = "new CA"
CERT_VALIDITY = "valid {start} to {end}"
CA_NOT_A_CA = "not a CA certificate (basicConstraints CA:TRUE missing)"
CA_NOT_P256 = "its key is not ECDSA P-256"
CA_NOT_SELF_SIGNED = "not self-signed"

# --- convocate-host: create-vm ---------------------------------------------------------------
VM_BAD_NAME = (
    "--name {value!r}: a VM name is one DNS label (RFC 1123): 1-63 of a-z, 0-9 and '-', not starting or ending"
    " with '-'"
)
VM_BAD_OPTION = "{option} {value!r}: {rule}"
VM_ADMISSION_DENIED = "admission denied for VM {name} on {host}, nothing was changed: {axes}"
VM_ADMISSION_AXIS = "{axis} asked {asked}, pledged {pledged}, allowed {allowed} (90% of {total} on this hypervisor)"
VM_EXISTS_DIFFERENT = (
    "{host}: a domain named {name} already exists with another spec ({differences}); create-vm never changes an"
    " existing VM: pick another --name, or remove the old one first (virsh destroy {name}; virsh undefine {name})"
)
VM_EXISTS_FOREIGN = (
    "{host}: a domain named {name} already exists and was not made by convocate-host create-vm: pick another --name"
)
VM_DISK_EXISTS = (
    "{host}: {path} already exists with a virtual size of {actual} where VM {name} needs {wanted}; create-vm never"
    " overwrites a disk: move it away, or pick another --name"
)
VM_OSDISK_TOO_SMALL = "--osdisk {wanted} GiB is smaller than the image {image} ({actual}): give at least {minimum}"
VM_LIBVIRT_UNREACHABLE = (
    "{host}: libvirt does not answer at {uri} ({detail}); start it (systemctl start libvirtd) and run create-vm"
    " again"
)
VM_NO_KVM = (
    "{host}: /dev/kvm is missing, so KVM cannot run the VM: turn on the CPU's virtualization extensions (VT-x or"
    " AMD-V) in the firmware, or nested virtualization when the hypervisor is itself a VM"
)
VM_NO_APT = (
    "{host}: apt-get is missing: create-vm installs the KVM/libvirt stack on Debian or Ubuntu only; install"
    " {packages} yourself and pass --no-install"
)
VM_NO_NETWORK = "{host}: libvirt has no network {network!r}: define it, or pass --network bridge:BRIDGE"
VM_NO_BRIDGE = (
    "{host}: there is no bridge {bridge!r} (/sys/class/net/{bridge}/bridge): create it, or pick another --network"
)
VM_NO_IP = (
    "VM {name} has no IPv4 address yet (no {source} within {seconds:g} s), so its DNS name was not registered:"
    " run create-vm again once it has booted, or give it a static address with --ip"
)
VM_DNS_NAME_TAKEN = (
    "{host}: {path} already holds a record for {name} that create-vm did not write ({line!r}): remove it, or pick"
    " another --name"
)
VM_DNS_NO_SHELL = (
    "{host}: {directory} does not exist, so this is not a shell host (convocate-host init-shell sets one up)"
)
VM_DNS_BUSY = "{host}: {path} kept changing while create-vm updated it; run create-vm again"
VM_LOCK_BUSY = (
    "{host}: another create-vm still holds {path} after {seconds:g} s (admission decisions on a hypervisor are made"
    " one at a time); run create-vm again when it is done"
)
VM_BAD_OUTPUT = "{host}: cannot read what {what} printed ({detail}); is this libvirt/qemu-img version supported?"
VM_NO_SHELL_HOST = "no --shell-host, so VM {name} gets no record in the cluster DNS"
VM_DRY_RUN_STOPS_AT_STACK = (
    "the dry run stops here: the next steps need the KVM/libvirt packages it would install (libvirt, qemu-img,"
    " genisoimage); run it again once they are installed to see them"
)
VM_DRY_RUN_STOPS_AT_LIBVIRT = (
    "the dry run stops here: libvirt at {uri} does not answer until libvirtd is started, and the next steps ask it;"
    " run it again once libvirt answers to see them"
)
VM_DRY_RUN_STOPS_AT_IMAGE = (
    "the dry run stops here: the next steps read the format and size of the cloud image {image} it would download;"
    " run it again with the image in place (or --image PATH) to see them"
)
VM_DRY_RUN_NO_LEASE = (
    "the dry run does not wait for VM {name}'s DHCP lease (it started no VM): a real run waits up to {seconds:g} s"
    " for it, then registers the DNS name"
)

# --- command lines (convocate/common/cli.py) -----------------------------------------
NO_PERMISSION = (
    "{action} {path} needs the account {user} or membership of the group {group}"
    " (sudo adduser {me} {group}, then log in again)"
)
NO_PERMISSION_ROOT = "{action} {path} needs root: run the command with sudo"
NO_PERMISSION_UNKNOWN = "{action}: permission denied ({detail})"
INTERNAL_ERROR = "internal error ({error}); this is a bug in {prog}: please report it with the traceback above"

# --- convocate-host --dry-run ---------------------------------------------------------
DRY_RUN_COMMAND = "would run: {command}{what}"
DRY_RUN_WRITE = "would write {path} ({size} bytes, mode {mode:04o}, {owner})"
DRY_RUN_DIR = "would make directory {path} (mode {mode:04o}, {owner})"
DRY_RUN_STREAM = "would stream into: {command}{what}"
DRY_RUN_SUMMARY = "{count} change(s) would be made; nothing was changed (dry run)"
DRY_RUN_NOTHING = "nothing would change (dry run)"
DRY_RUN_STOPS_AT_PACKAGE = (
    "the dry run stops here: the next steps read what installing {package} creates (keys, IDs, services);"
    " run it again once the package is installed to see them"
)

# --- the Claude Code pin (convocate_host.claude_pin, convocate-host update --claude-code) ----------
CLAUDE_CODE_BAD_VERSION = "Claude Code version {value!r} is not a plain X.Y.Z version (nor 'latest')"
CLAUDE_CODE_REGISTRY_FAILED = "cannot ask the npm registry {url} for the newest Claude Code: {reason}; the pin is unchanged"
CLAUDE_CODE_REGISTRY_BAD = "the npm registry {url} gave no usable newest Claude Code: {reason}; the pin is unchanged"
CLAUDE_CODE_PIN_UNREADABLE = "the Claude Code pin {path} is unusable: {reason} (it must hold one X.Y.Z line)"
CLAUDE_CODE_PINNED = "Claude Code {old} \u2192 {new} (pinned in {path})"
CLAUDE_CODE_PIN_KEPT = "Claude Code {version} (already pinned in {path})"
CLAUDE_CODE_ROLL_NOTE = (
    "running sessions keep Claude Code as they have it until they are restarted ((R)estart in the TUI);"
    " new sessions and restarts take {version}"
)
CLAUDE_CODE_NO_SHELL_PACKAGE = (
    "{host} has no convocate package, so there is no build context to build the session image from;"
    " run `convocate-host init-shell` there first"
)
CLAUDE_CODE_IMAGE_MISMATCH = (
    "the image {tag} says it carries Claude Code {label!r} (label convocate.claude-code), not {version};"
    " it was not rolled out"
)
