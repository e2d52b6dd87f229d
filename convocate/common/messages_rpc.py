"""Message texts of the agent's RPC: error texts (part of the wire protocol, DESIGN §3, kept
compatible with the original convocate agents), parameter rules, credentials, lifecycle conflicts,
session records, attach, pre-authentication and channel limits, keys, the shell side and the TUI forms.

Each constant is a ``str.format`` template; the placeholders are named. Import them through
:mod:`convocate.common.messages`.
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
