"""User-facing message texts, in one place so tests import them instead of repeating them.

Each constant is a ``str.format`` template; the placeholders are named.
The first group is part of the wire protocol (DESIGN §3) and is kept
compatible with the original convocate agents.
"""

# --- RPC error texts (DESIGN §3) -------------------------------------------
MALFORMED_REQUEST = "malformed request: {detail}"
UNKNOWN_OP = 'unknown op: "{op}"'
DECODE_PARAMS = "decode params: {detail}"
SESSION_NOT_FOUND = 'session "{id}" does not exist'
LINE_TOO_LONG = "line exceeds {limit} bytes"
ID_TOO_LARGE = "the request's id is too large to echo in a response of at most {limit} bytes"

# --- parameter rules ---------------------------------------------------------
UNKNOWN_FIELD = 'unknown field "{field}"'
MISSING_FIELD = 'missing required field "{field}"'
WRONG_TYPE = 'field "{field}" must be {expected}, got {got}'
BAD_UUID = 'field "{field}": "{value}" is not a UUIDv4'
BAD_NAME = (
    'field "{field}": name must be 1-64 characters of letters, digits, space, "_", "-" or "."'
    " (got {value!r})"
)
BAD_PORT = 'field "port": {value} is out of range (0 none, -1 auto, 1-65535)'
BAD_PROTOCOL = 'field "protocol": must be "tcp" or "udp", got {value!r}'
BAD_DNS_NAME = 'field "dns_name": {value!r} is not a valid DNS name: {reason}'
DNS_NAME_NOT_A_LABEL = (
    "a session's DNS name is one label of a-z, 0-9 and '-' (the shell host adds the cluster's domain)"
)
DNS_NAME_OUTSIDE_DOMAIN = "a dotted name must lie inside the cluster's domain {domain}"
BAD_RANGE = 'field "{field}": {value} is out of range ({low}..{high}{unit})'
BAD_TEXT = 'field "{field}": {reason}'

# --- credentials (convocate.common.credentials, issue 15) ---------------------------
BAD_CREDENTIAL_NAME = (
    'field "{field}": a credential name is 1-32 of a-z, 0-9 and "-", starting with a letter or digit'
    " (got {value!r})"
)
BAD_CREDENTIAL_KIND = 'field "kind": must be "api_key" or "oauth_token", got {value!r}'
#: Never quotes the value: it is a secret.
BAD_CREDENTIAL_SECRET = (
    'field "secret": must be 1-{limit} printable ASCII characters without spaces (the value is not shown)'
)
CREDENTIAL_NOT_FOUND = 'credential "{name}" does not exist on this agent'
CREDENTIAL_NOT_ON_AGENT = (
    'credential "{name}" does not exist on this agent: set it with `convocate auth set --name {name}` '
    "(or `convocate auth push` if the shell host has it)"
)
#: A session whose credential is gone at start: it starts without one (agent log and the session's view).
CREDENTIAL_MISSING_AT_START = 'session {id}: its credential "{name}" does not exist on this agent; started without one'
AUTH_SET_OK = "agent {agent}: {name} ({kind}) {fingerprint} set"
AUTH_AGENT_FAILED = "agent {agent}: failed: {error}"
AUTH_PUSH_HINT = "{failed} of {total} agent(s) did not take it; run `convocate auth push` once they answer"
AUTH_RM_OK = "agent {agent}: {name} removed"
AUTH_RM_ABSENT = "agent {agent}: {name} was not there"
AUTH_NOTHING_STORED = "the shell host holds no credential{which}: set one with `convocate auth set`"
AUTH_NO_SECRET = "no secret given: pass --from-file FILE, pipe it on stdin, or type it at the prompt"
AUTH_SECRET_IN_ARGV = "a secret is never taken from the command line: use --from-file FILE, stdin or the prompt"
AUTH_SHELL_UNREADABLE = "the shell host's credentials ({path}) are root's: run as root to compare fingerprints"
AUTH_STATUS_MISSING = "missing"
AUTH_STATUS_DIFFERS = "differs from the shell's"
AUTH_STATUS_NOT_ON_SHELL = "not on the shell host"
#: The TUI's marker and detail line for a session started with a credential that has since changed.
CREDENTIAL_STALE_MARK = "old-cred"
CREDENTIAL_STALE_DETAIL = (
    'runs with an old credential "{name}" ({running}), changed or removed since: restart it to use the current one'
)
CREDENTIAL_MISSING_DETAIL = 'its credential "{name}" is not on agent {agent}: it runs without one'

# --- lifecycle conflicts -------------------------------------------------------
PORT_IN_USE = "port {port}/{protocol} is already used by session {owner}"
PORT_BUSY_ON_HOST = "port {port}/{protocol} is in use on the agent host"
NO_FREE_PORT = "no free {protocol} port left at or above {low}"
DNS_NAME_IN_USE = 'dns name "{dns_name}" is already used by session {owner}'
SESSION_RUNNING = 'session "{id}" is running; kill it first'
SESSION_MOVING = (
    'session "{id}" is being moved to agent {agent}: its copy here does not start until the move ends;'
    ' `convocate move --resume {id}` on the shell host finishes it or rolls it back'
)
SESSION_NOT_RUNNING = 'session "{id}" is not running'
SESSION_LOCKED = 'session "{id}" is locked by {holder}'
NO_IMAGE = "no session image configured: {path} is missing or empty (convocate-host init-agent writes it)"
SESSION_NOT_READY = 'session "{id}" did not become ready within {seconds:g} s: {detail}'
NO_AGENT_ADMITS = "admission denied: no agent takes the session ({reasons})"
DRAIN_MARKED = "agent {agent} is draining: it takes no new session"
DRAIN_MOVED = "moved {session} to {agent}"
DRAIN_STAYED = "{session} stays: {reason}"
DRAIN_DONE = "agent {agent} drained: {moved} session(s) moved, {stayed} stayed"
UNDRAINED = "agent {agent} takes new sessions again"
PLACEMENT_SKIPPED = "agent {agent} refused the session after placement chose it ({reason}); trying the next"
PLACED_CREATE = "create {name} on {agent} (placement: {reason} free)"
AGENT_DRAINING = "agent {agent} is draining: it takes no new session (`convocate undrain {agent}` ends it)"
ADMISSION_DENIED = (
    "admission denied: {axis} asked {asked}, reserved {reserved}, allowed {allowed}"
    " (90% of {total} on this host)"
)
INVALID_SESSION_FILE = "{path}: invalid session metadata: {detail}"
# The agent's records of its sessions (issue 14): migration from the homes, and what a crash left.
LEGACY_RECORD_MIGRATED = "session {id}: its session.json moved from the home into {path}"
LEGACY_RECORD_REFUSED = "session {id}: {path} is not a valid session record ({detail}); the session is left out"
LEGACY_RECORD_CLEARED = ("session {id}: {field} {value!r} of its session.json is already session {owner}'s;"
                         " cleared")
RECORD_WITHOUT_HOME = "session {id}: the record {path} has no home {home}; the session is left out"
HOME_WITHOUT_RECORD = "{home}: a home without a record in {records}; not a session (left alone)"
NO_TRASH_RECORD = 'trash entry "{id}" has no record in {path}; it cannot be restored'

# --- attach ------------------------------------------------------------------
ATTACH_BAD_HEADER = "bad attach header: {detail}"
ATTACH_HINT = "[convocate] attached to {name} ({id}); detach with Ctrl-b d"

# --- before authentication, and channel limits (docs/security.md) ----------------
PREAUTH_FLOOD = (
    "refused {count} unauthenticated connection(s) in {seconds:.1f} s from {sources} source(s) ({top});"
    " by cap: {caps}; caps: {max_startups} unauthenticated in total, {per_source} per source"
)
TOO_MANY_CHANNELS = "too many open channels on this connection (at most {limit})"
LOW_NOFILE = (
    "the open-file limit is {limit}, below the {wanted} the documented scale needs;"
    " set LimitNOFILE= in the unit (the packaged units set 8192)"
)
RPC_REQUEST_TIMEOUT = "no complete request line within {seconds:g} s"
RPC_IDLE_TIMEOUT = "held channel idle for {seconds:g} s"

# --- keys and configuration ------------------------------------------------------
NOT_ED25519 = "{path}: key type {algorithm} is not accepted; convocate uses ed25519 only"
KEY_UNREADABLE = "{path}: cannot read key: {detail}"
AUTH_KEYS_SKIPPED = "{path}: line {line}: not an ssh-ed25519 key; ignored"

# --- shell side ----------------------------------------------------------------
NO_AGENTS = (
    "no agent is registered in {path}; register one with `convocate-host init-agent --host HOST`"
    " (or run ./build.sh demo for a local cluster)"
)
PEER_UNREACHABLE = "{peer} ({address}): {detail}"
HOST_KEY_MISMATCH = "{peer} ({address}) presented a host key that does not match the pinned key in {path}"
AMBIGUOUS_SESSION = 'session reference "{ref}" matches {count} sessions: {matches}'
NO_SUCH_SESSION = 'no session matches "{ref}" (by UUID, UUID prefix or name)'

# --- TUI forms (the same rules as the agent's, in the form's own notation) -------------
FORM_NOT_A_NUMBER = 'field "{field}": {value!r} is not {rule}'
FORM_PORT_RULE = "blank (no port), 0 (pick a free one) or a port number 1-65535"
FORM_CPUS_RULE = "a number of cores ({low:g}..{high:g})"
FORM_MEMORY_RULE = "a whole number of MiB ({low}..{high})"
FORM_REFUSED = "{form}: the value of {label} is not accepted."
FORM_AGENT_REFUSED = "{form}: agent {agent_id} refused it."
FORM_VALUES_KEPT = "What you typed is kept: correct it and choose OK, or Cancel."

# --- install steps (DESIGN §7) -----------------------------------------------------
DOCKER_UNREACHABLE = (
    "Docker is not reachable ({detail}). The agent runs every session as a Docker container: install"
    " docker.io (or docker-ce), start it (systemctl start docker), then run `convocate-agent install` again"
)
NO_DOCKER_GROUP = (
    "group docker does not exist: convocate-agent.service reaches dockerd through it"
    " (SupplementaryGroups=docker); install docker.io or docker-ce"
)
ACCOUNT_ID_MISMATCH = (
    "{kind} {name} exists with {id_name} {actual}; convocate needs {id_name} {wanted} (session containers run as"
    " {wanted}): change it (usermod/groupmod) or remove the {kind}, then run the install again"
)
ACCOUNT_ID_TAKEN = (
    "{id_name} {wanted} belongs to {kind} {other}; convocate needs it for its {kind} {name}:"
    " free it, then run the install again"
)
COMMAND_FAILED = "{what}: `{command}` exited with status {status}: {detail}"
BAD_INSTALL_PORT = "{option}: {value!r} is not a port number (1-65535)"
BAD_INSTALL_HOST = "{option}: {value!r} is not a host name or an IP address"
IMAGE_NOT_BUILT = (
    "the session image {tag} was not built: {reason}. Install Docker (docker.io or docker-ce) and run"
    " `convocate install` again, or build it later with: {command}"
)
LISTEN_PORT_IN_USE = (
    "TCP port {port} is in use by {who}, so {unit} cannot listen there: stop that program, or choose"
    " another port with dpkg-reconfigure"
)
DEFAULTS_BY_DEBCONF = (
    "{path} holds debconf answers that the {package} package writes (with ucf): change them with"
    " `dpkg-reconfigure {package}`"
)
IMAGE_NOT_YET = "no session image yet: {tag} is not there because {reason}; {retry}"
IMAGE_BUILD_RETRY = (
    "build it with `sudo systemctl start {unit}` (follow it with `journalctl -fu {unit}`)"
    " or in the foreground with `sudo convocate install --image`"
)
IMAGE_BUILD_FOLLOW = "follow it with `journalctl -fu {unit}`"
IMAGE_BUILD_STARTED = (
    "the session image is built in the background by {unit}: follow it with `journalctl -fu {unit}`;"
    " `convocate image-status` says when it is ready"
)
IMAGE_CONTEXT_MISSING = (
    "the session image's build context {path} is missing: reinstall the convocate package, or pass"
    " --image-context DIR (or --no-image)"
)
IMAGE_BUILD_FAILED = (
    "building the session image {tag} failed (build-image.sh exited with status {status}; its output is above);"
    " retry with `sudo convocate install --image` (or `sudo systemctl start convocate-image-build`);"
    " `--base-image IMAGE` builds from a local base image"
)

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

# --- report sockets (convocate_agent.activity) ---------------------------------------------------------
#: The answer to a report whose sender is not the session's container or the agent (details go to the log).
REPORT_PEER_REFUSED = "refused: only this session's container may report on this socket"
HOST_NO_STATUS_KEY = (
    "agent {agent} has no status key yet, so none is bound to it in the shell's registry; run"
    " `convocate-host init-agent` for it"
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
# --- usage limits and replies (issue 15: convocate reply, the TUI's W list) -----------------------------
REPLY_NOT_WAITING = (
    "{name} is not waiting for an answer (it is {activity}); `convocate send` types into it anyway,"
    " or give --force"
)
REPLY_EMPTY = "nothing to reply: the text is empty"
REPLY_STILL_WAITING = "{name} is still waiting after {timeout:g} s; the reply was typed but not taken"
REPLY_TAKEN = "{name} took the reply (now {activity})"
REPLY_SENT = "replied to {name}"
NO_SESSION_WAITING = "no session is waiting for you"
SESSION_LIMITED = "{name} hit a usage limit{until}: {detail}"
LIMIT_OVER = "the usage limit reset at {until}; waiting for a prompt"
# --- recordings: replay and grep (issue 19 item 2, convocate.common.asciicast, convocate_agent.recordings) ---
CAST_BAD_NAME = "{name!r} is not a recording's file name (YYYYmmddTHHMMSS.ffffffZ.cast)"
CAST_BAD_HEADER = "{source} line 1: not an asciicast v2 header: {reason}"
CAST_BAD_EVENT = "{source} line {line}: not an asciicast v2 event: {reason}"
NO_RECORDINGS = 'session "{id}" has no recordings on this agent'
NO_SUCH_RECORDING = 'session "{id}" has no recording "{file}"'
BAD_RECORDING_FILE = 'field "file": {value!r} is not a recording\'s file name (YYYYmmddTHHMMSS.ffffffZ.cast)'
RECORDING_NOT_REGULAR = 'recording "{file}" of session "{id}" is not a regular file; refused'
RECORDING_BAD_OFFSET = 'field "offset": {offset} is not the start of a line of "{file}"'
GREP_BAD_PATTERN = 'field "pattern": {pattern!r} is not a Python regular expression: {reason}'
GREP_BAD_WINDOW = 'field "until": {until} is before "since" {since}'
REPLAY_BAD_TIME = "{value!r} is neither an RFC 3339 time (2026-11-21T14:29:00Z) nor relative (-10m, -2h, -30s, -1d)"
REPLAY_NOTHING = "{name} has no recorded events{window}"
REPLAY_SMALL_TERMINAL = (
    "the recording is {width}x{height} and this terminal is {cols}x{rows}: lines are cut or wrapped;"
    " enlarge the terminal to see it as it was"
)
REPLAY_NEEDS_TERMINAL = "replay plays in a terminal; use --cat, --json or --export FILE.cast to read it elsewhere"
REPLAY_KEYS = "space pause  . step  + - speed  ] [ seek 10 s  q quit"
GREP_AGENT_FAILED = "agent {agent}: {error}"
GREP_TRUNCATED = "agent {agent}: stopped after {reason}; narrow it with --session, --since or --until"
# --- operator identity (issue 19: operator_challenge, operator_identify, convocate whoami) ---------------
BAD_OPERATOR_NAME = (
    'field "{field}": an operator name is 1-32 of a-z, 0-9, ".", "_" and "-", starting with a letter'
    " (got {value!r})"
)
OPERATOR_INPUT_TOO_LONG = 'field "{field}": longer than {limit} characters'
OPERATOR_BAD_CERTIFICATE = 'field "certificate": not an OpenSSH certificate: {detail}'
OPERATOR_BAD_SIGNATURE_FIELD = 'field "signature": {detail}'
OPERATOR_NO_CHANNEL_STATE = "operator identity needs an SSH connection (this channel has no connection state)"
OPERATOR_NO_CA = (
    "this agent has no operator CA ({path}): it cannot identify operators; "
    "`convocate-host init-agent` installs it from the shell host's {shell_path}"
)
OPERATOR_CA_UNREADABLE = "this agent's operator CA {path} is unusable: {detail}"
OPERATOR_NO_CHALLENGE = "no operator challenge on this connection: ask operator_challenge first"
OPERATOR_CHALLENGE_USED = "the operator challenge of this connection was already used: ask operator_challenge again"
OPERATOR_CHALLENGE_EXPIRED = (
    "the operator challenge of this connection expired ({seconds:g} s): ask operator_challenge again"
)
OPERATOR_NOT_USER_CERT = "the certificate is not an SSH user certificate"
OPERATOR_UNKNOWN_CA = (
    "the certificate is signed by {signer}, not by this cluster's operator CA {ca}"
)
OPERATOR_CERT_NOT_YET_VALID = "the certificate is not valid before {when}"
OPERATOR_CERT_EXPIRED = "the certificate expired at {when}"
OPERATOR_PRINCIPAL_MISMATCH = "the certificate's principals {principals} do not include its key ID {key_id!r}"
OPERATOR_BAD_KEY_ID = "the certificate's key ID {key_id!r} is not an operator name: {detail}"
OPERATOR_BAD_CLAIM_SIGNATURE = (
    "the signature is not by the certificate's key {fingerprint} over this connection's challenge"
)
OPERATOR_IDENTIFIED = "operator {name} ({fingerprint}) identified"
# shell side (convocate.operator)
OPERATOR_NO_SHELL_CA = "no operator CA on this shell host ({path})"
OPERATOR_NO_CERTIFICATE = "no certificate in SSH_AUTH_SOCK signed by the operator CA"
OPERATOR_NO_AGENT_SOCKET = "no SSH_AUTH_SOCK (log in with `ssh -A`) and no CONVOCATE_OPERATOR_KEY"
OPERATOR_AGENT_SOCKET_FAILED = "the SSH agent at SSH_AUTH_SOCK={path} cannot be used: {detail}"
OPERATOR_KEY_FILE_FAILED = "CONVOCATE_OPERATOR_KEY={path}: {detail}"
OPERATOR_KEY_FILE_NOT_CA = "CONVOCATE_OPERATOR_KEY={path}: its certificate {cert} is not signed by the operator CA"
OPERATOR_CLAIM_FAILED = "agent {agent}: operator identity refused: {detail}; continuing unidentified"
OPERATOR_AGENT_TOO_OLD = "the agent does not know operator identity (an older convocate-agent)"
WHOAMI_LINE = "agent {agent}: {name} ({fingerprint})"
WHOAMI_UNIDENTIFIED = "agent {agent}: unidentified: {reason}"
OPERATOR_CERT_ISSUED = "certificate for {name} ({fingerprint}, valid until {until}) written to {path}"
OPERATOR_CA_MISSING = "the operator CA {path} is missing: run `convocate-host init-shell` on this host first"
OPERATOR_CA_NOT_ROOT = "the operator CA {path} is root's (0600): run operator-cert as root"
OPERATOR_PUBKEY_UNREADABLE = "{path}: not an SSH public key: {detail}"

# --- the audit trail (issue 19) ---------------------------------------------------------------------------
AUDIT_WRITE_FAILED = "AUDIT RECORD LOST: cannot append to {path} (op {op}): {error}; the op went on"
AUDIT_TORN_TAIL = ("the audit file {path} does not end with a whole record (a torn write after seq {seq}); "
                   "it is left as it is and the next record says \"repaired\": true")
AUDIT_FORWARD_DOWN = ("audit records are not reaching rsyslog at {socket} ({error}); they stay in the agent's "
                      "file and journal; logged once until it answers again")
AUDIT_FORWARD_BACK = "audit records reach rsyslog at {socket} again"
AUDIT_TOO_LONG_TO_FORWARD = ("an audit record of {size} bytes is longer than a forwarded datagram may be "
                             "({limit}); it is in the agent's file and journal only")
AUDIT_DUPLICATE = "{source}: line {line} repeats record {seq} (delivered twice; log forwarding is at least once)"
AUDIT_COPY_AHEAD = ("{agent}: records {first}..{last} are in the shell's copy {copy} but not in the agent's "
                    "chain: they were cut from its end")
AUDIT_COPY_DIFFERS = "{agent}: record {seq} differs from the shell's copy {copy}: the agent's chain was rewritten"
AUDIT_COPY_BEHIND = "{copy} ends {count} record(s) before the agent's chain, at seq {seq} (in flight, or not forwarded)"
AUDIT_COPY_AGREES = "{agent}: the shell's copy {copy} agrees ({count} record(s) compared)"
AUDIT_CHAIN_OK = "{source}: {count} record(s), chain intact"
AUDIT_CHAIN_TORN = "{source}: line {line} is not a whole record (a torn write); record {seq} after it says repaired"
AUDIT_CHAIN_BROKEN = "{source}: record {seq} (line {line}) is broken: {reason}"
AUDIT_BAD_PREV = "prev does not match the SHA-256 of record {seq}"
AUDIT_BAD_FIRST_PREV = "the first record's prev is not 64 zeros"
AUDIT_BAD_SEQ = "seq {got} follows seq {want_after} (expected {want})"
AUDIT_NOT_A_RECORD = "line {line} is not a JSON record"
AUDIT_UNREPAIRED = "line {line} is not a whole record and the next record does not say repaired"
AUDIT_FILE_UNREADABLE = "cannot read the audit file {path}: {error}"
AUDIT_BAD_TIME = "--{flag} {value!r} is not a time: {reason} (RFC 3339, e.g. 2026-12-07T06:30:00Z)"

# --- moving a session between agents (issue 18 item 2; convocate_agent/transfer.py, convocate/move.py) ---
TRANSFER_REFUSED = 'transfer refused: member "{member}": {why}'
TRANSFER_BAD_TAR = "transfer refused: not a readable tar stream: {detail}"
TRANSFER_BAD_MANIFEST = "transfer refused: bad manifest: {detail}"
TRANSFER_VERIFY_FAILED = 'transfer verification failed: "{member}": {why}'
TRANSFER_BAD_HEADER = "bad transfer header: {detail}"
TRANSFER_PORT_TAKEN = 'port {port} is taken on the target by session "{name}"'
MOVE_SAME_AGENT = 'session "{name}" is on agent "{agent}" already'
MOVE_NO_TARGET = 'no other agent admits session "{name}" (see `convocate place --dry-run`)'
MOVE_BAD_ANSWER = "move: bad answer from an agent's transfer channel: {detail}"
MOVE_BAD_JOURNAL = "move journal {path} is unreadable ({error}); remove it after checking both agents"
MOVE_AGENT_UNREACHABLE = 'move: agent "{agent}" cannot be asked whether it holds the session; run `convocate move --resume` later'
ATTACH_MOVING = "{name} is moving away from agent {agent}; attaching again where it runs next... (Ctrl-C gives up)"
ATTACH_FOLLOWED = "{name} runs on agent {agent}; attached there"
ATTACH_MOVED_AWAY = "{name} is moving to another agent; attach again once it runs there"
MOVE_PENDING_REFUSES = (
    '{name} is being moved from {source} to {target} (step {step}): no {op} until the move ends; if it was'
    ' cut short, `convocate move --resume {name}` finishes it'
)
MOVE_AMBIGUOUS = 'move: "{ref}" matches several interrupted moves ({uuids}); name one by its UUID'
MOVE_LEFT_PENDING = 'move of "{name}" left pending ({error}); `convocate move --resume {name}` finishes it'
# Mixed clusters: agents of the Go original v0.0.5 (convocate/compat.py, docs/compat.md).
COMPAT_LACKS = "agent {agent} speaks protocol {protocol} (convocate v{version}): it has no {what}"
COMPAT_NO_CAPACITY = "protocol {protocol}: no capacity"
