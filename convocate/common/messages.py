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
BAD_RANGE = 'field "{field}": {value} is out of range ({low}..{high}{unit})'
BAD_TEXT = 'field "{field}": {reason}'

# --- lifecycle conflicts -------------------------------------------------------
PORT_IN_USE = "port {port}/{protocol} is already used by session {owner}"
PORT_BUSY_ON_HOST = "port {port}/{protocol} is in use on the agent host"
NO_FREE_PORT = "no free {protocol} port left at or above {low}"
DNS_NAME_IN_USE = 'dns name "{dns_name}" is already used by session {owner}'
SESSION_RUNNING = 'session "{id}" is running; kill it first'
SESSION_NOT_RUNNING = 'session "{id}" is not running'
SESSION_LOCKED = 'session "{id}" is locked by {holder}'
NO_IMAGE = "no session image configured: {path} is missing or empty (convocate-host init-agent writes it)"
SESSION_NOT_READY = 'session "{id}" did not become ready within {seconds:g} s: {detail}'
ADMISSION_DENIED = (
    "admission denied: {axis} asked {asked}, reserved {reserved}, allowed {allowed}"
    " (90% of {total} on this host)"
)
INVALID_SESSION_FILE = "{path}: invalid session metadata: {detail}"

# --- attach ------------------------------------------------------------------
ATTACH_BAD_HEADER = "bad attach header: {detail}"
ATTACH_HINT = "[convocate] attached to {name} ({id}); detach with Ctrl-b d"

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
IMAGE_CONTEXT_MISSING = (
    "the session image's build context {path} is missing: reinstall the convocate package, or pass"
    " --image-context DIR (or --no-image)"
)
IMAGE_BUILD_FAILED = (
    "building the session image {tag} failed (build-image.sh exited with status {status}; its output is above);"
    " `convocate install --no-image` skips the build, `--base-image IMAGE` builds from a local base image"
)
