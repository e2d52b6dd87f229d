"""Message texts of operator identity and the audit trail (issue 19).

Each constant is a ``str.format`` template; the placeholders are named. Import them through
:mod:`convocate.common.messages`.
"""

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
