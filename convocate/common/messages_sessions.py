"""Message texts about running sessions: report sockets (convocate_agent.activity), usage limits
and replies (issue 15), recordings (issue 19 item 2), moving a session between agents (issue 18
item 2) and mixed clusters with the Go original.

Each constant is a ``str.format`` template; the placeholders are named. Import them through
:mod:`convocate.common.messages`.
"""

# --- report sockets (convocate_agent.activity) ---------------------------------------------------------
#: The answer to a report whose sender is not the session's container or the agent (details go to the log).
REPORT_PEER_REFUSED = "refused: only this session's container may report on this socket"
HOST_NO_STATUS_KEY = (
    "agent {agent} has no status key yet, so none is bound to it in the shell's registry; run"
    " `convocate-host init-agent` for it"
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
