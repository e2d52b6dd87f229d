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
