"""The agent host's side of log forwarding: the rsyslog drop-in that reads the session containers' logs
and forwards them to the shell host over TLS (omfwd with a disk-assisted queue), and rsyslog's account.

See :mod:`convocate_host.rsyslog` for the design.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from convocate.common.auditchain import AUDIT_APP_NAME
from convocate.common.paths import CLAUDE_UID, Paths
from convocate_host.pki import SHELL_PEER_NAME, validate_agent_id
from convocate_host.rsyslog_layout import (
    AGENT_DROPIN,
    AUDIT_MSGID,
    AUDIT_SOCKET_NAME,
    CA_CERT,
    CLIENT_CERT,
    CLIENT_KEY,
    FIRST_PORT,
    MAX_MESSAGE_SIZE,
    MESSAGE_SIZE_DROPIN,
    fill,
    rsyslog_dropin_dir,
    rsyslog_spool_dir,
    safe_host,
    safe_int,
    safe_path,
)

# --- agent host ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AgentForwarder:
    """An agent host's session-log socket and its forwarding to the shell host.

    Attributes:
        agent_id: The agent's ID, sent as HOSTNAME of every message.
        shell_address: Host name or IP address of the shell host (``/etc/convocate-agent/shell-host``).
        socket: The Unix datagram socket Docker's syslog driver writes to.
        ca_file: The cluster CA certificate (``rsyslog-tls/ca.pem``).
        cert_file: The agent's client certificate (``rsyslog-tls/client.pem``).
        key_file: Its key (``rsyslog-tls/client.key``).
        spool_dir: Where the queue spills to disk (must exist; rsyslog does not create it).
        shell_port: This agent's own TLS listener port on the shell host (:func:`choose_log_port`).
        shell_peer_name: The name the shell's server certificate must carry.
        queue_size: Messages held in memory before the queue spills to disk.
        queue_max_disk_bytes: Disk the queue may use, in bytes; beyond it new messages are dropped.
        resume_interval_s: Seconds between reconnection attempts while the shell is unreachable
            (rsyslog stretches it after every 10 failures, up to ``resume_interval_max_s``).
        resume_interval_max_s: The longest wait between attempts, in seconds.
        audit_uid: The only UID whose messages the audit socket forwards (the agent's user;
            imuxsock's trusted property ``$!uid``, from the kernel's SCM_CREDENTIALS).
        audit_socket: The Unix datagram socket the agent sends its audit records to
            (:attr:`Paths.agent_audit_socket`; default: ``audit.sock`` beside ``socket``).
    """

    agent_id: str
    shell_address: str
    socket: Path
    ca_file: Path
    cert_file: Path
    key_file: Path
    spool_dir: Path
    shell_port: int = FIRST_PORT
    shell_peer_name: str = SHELL_PEER_NAME
    queue_size: int = 10000
    queue_max_disk_bytes: int = 512 * 1024 * 1024
    resume_interval_s: int = 10
    resume_interval_max_s: int = 120
    audit_uid: int = CLAUDE_UID
    audit_socket: Path | None = None

    def __post_init__(self) -> None:
        if self.audit_socket is None:  # beside the session socket (Paths.agent_audit_socket)
            object.__setattr__(self, "audit_socket", self.socket.with_name(AUDIT_SOCKET_NAME))

    @classmethod
    def from_paths(cls, paths: Paths, agent_id: str, shell_address: str, *,
                   shell_port: int = FIRST_PORT) -> AgentForwarder:
        """The forwarder of an agent host laid out by ``paths`` (``/etc/convocate-agent/rsyslog-tls/*``)."""
        tls = paths.agent_rsyslog_tls
        return cls(agent_id=agent_id, shell_address=shell_address, socket=paths.agent_log_socket,
                   audit_socket=paths.agent_audit_socket,
                   ca_file=tls / CA_CERT, cert_file=tls / CLIENT_CERT, key_file=tls / CLIENT_KEY,
                   spool_dir=rsyslog_spool_dir(paths), shell_port=shell_port)


#: One TLS forwarding action to the shell host (omfwd over gtls, a disk-assisted queue that never drops),
#: for the session logs and the audit records alike; filled by :func:`_forward_action`.
_FORWARD_ACTION = """\
action(type="omfwd" name="@name@" target="@shell_address@" port="@shell_port@"
       protocol="tcp" TCP_Framing="octet-counted" template="@name@"
       StreamDriver="gtls" StreamDriverMode="1"
       StreamDriverAuthMode="x509/name" StreamDriverPermittedPeers="@shell_peer_name@"
       StreamDriver.CheckExtendedKeyPurpose="on" StreamDriver.PermitExpiredCerts="off"
       StreamDriver.CAFile="@ca_file@"
       StreamDriver.CertFile="@cert_file@"
       StreamDriver.KeyFile="@key_file@"
       queue.type="LinkedList" queue.size="@queue_size@"
       queue.filename="@queue_file@" queue.spoolDirectory="@spool_dir@"
       queue.maxDiskSpace="@queue_max_disk_bytes@" queue.saveOnShutdown="on"
       queue.timeoutEnqueue="0"
       action.resumeRetryCount="-1" action.resumeInterval="@resume_interval_s@"
       action.resumeIntervalMax="@resume_interval_max_s@")"""


def _forward_action(name: str, queue_file: str, indent: int) -> str:
    """The forwarding action named ``name`` (also its template's name), spooling to ``queue_file``, indented."""
    text = _FORWARD_ACTION.replace("@name@", name).replace("@queue_file@", queue_file)
    return "\n".join(" " * indent + line for line in text.splitlines())


_AGENT_DROPIN = """\
# @dropin@: forward convocate's session logs to the shell host (DESIGN §4, §5).
# Written by `convocate-host init-agent` for agent @agent_id@; a re-run overwrites changes.
#
# Session containers log through Docker's syslog driver (syslog-format=rfc5424) to the socket
# @socket@. Its messages have their own ruleset, so none reaches the host's own rules,
# and go to @shell_address@:@shell_port@ over TLS (gtls, x509/name: the server certificate must be issued
# by the cluster CA for @shell_peer_name@), as RFC 5424 with HOSTNAME @agent_id@, to this agent's
# own listener there, which admits only this agent's certificate and files only lines naming @agent_id@.
# While the shell is unreachable they wait in a disk-assisted queue (up to @queue_max_disk_bytes@ bytes
# in @spool_dir@), retried forever; beyond that they are dropped, never
# blocking the containers. imuxsock is already loaded by Debian's /etc/rsyslog.conf: this file only
# adds an input of it; TLS files are set on the action, not in global().
#
# The agent's audit records come to a socket of their own, @audit_socket@, and leave by an action
# of their own (its own connection and queue) as APP-NAME @audit_app@ with MSGID @audit_msgid@: a
# constant of their template, which the session template never writes (its MSGID is "-"), so
# nothing sent to the session socket, whatever its APP-NAME, is filed as an audit record on the
# shell. That socket is open to every local user too (imuxsock makes it 0666), so only messages whose
# sender's UID, as the kernel reports it (imuxsock's trusted property $!uid: Annotate, ParseTrusted),
# is the agent's (@audit_uid@) are forwarded from it.

template(name="convocate_forward" type="list") {
    constant(value="<")
    property(name="pri")
    constant(value=">1 ")
    property(name="timestamp" dateFormat="rfc3339")
    constant(value=" @agent_id@ ")
    property(name="app-name")
    constant(value=" ")
    property(name="procid")
    constant(value=" - ")
    property(name="structured-data")
    constant(value=" ")
    property(name="msg" droplastlf="on")
}

ruleset(name="convocate_sessions") {
@forward_sessions@
    stop
}

input(type="imuxsock" Socket="@socket@" CreatePath="on" ruleset="convocate_sessions"
      UseSpecialParser="off" RateLimit.Interval="0")

template(name="convocate_audit_forward" type="list") {
    constant(value="<")
    property(name="pri")
    constant(value=">1 ")
    property(name="timestamp" dateFormat="rfc3339")
    constant(value=" @agent_id@ @audit_app@ ")
    property(name="procid")
    constant(value=" @audit_msgid@ - ")
    property(name="msg" droplastlf="on")
}

ruleset(name="convocate_audit") {
    if $!uid == "@audit_uid@" then {
@forward_audit@
    }
    stop
}

input(type="imuxsock" Socket="@audit_socket@" CreatePath="on" ruleset="convocate_audit"
      UseSpecialParser="off" RateLimit.Interval="0" Annotate="on" ParseTrusted="on")
"""


def render_agent_dropin(forwarder: AgentForwarder) -> str:
    """The agent host's drop-in, ``/etc/rsyslog.d/60-convocate-agent.conf``.

    Args:
        forwarder: Agent ID, shell address and port, the socket, TLS files and the queue's bounds.

    Returns:
        The RainerScript text.

    Raises:
        ConfigError: the agent ID is malformed, a path cannot go in a RainerScript string, the shell
            address or peer name is malformed, or a number is out of range.
    """
    spool = safe_path("spool_dir", forwarder.spool_dir).rstrip("/") or "/"
    dropin = (_AGENT_DROPIN.replace("@forward_sessions@", _forward_action("convocate_forward", "convocate-forward", 4))
              .replace("@forward_audit@", _forward_action("convocate_audit_forward", "convocate-audit", 8)))
    return fill(
        dropin,
        dropin=str(rsyslog_dropin_dir(Paths()) / AGENT_DROPIN),
        agent_id=validate_agent_id(forwarder.agent_id),
        shell_address=safe_host("shell_address", forwarder.shell_address),
        shell_port=str(safe_int("shell_port", forwarder.shell_port, 1, 65535)),
        shell_peer_name=safe_host("shell_peer_name", forwarder.shell_peer_name),
        socket=safe_path("socket", forwarder.socket),
        ca_file=safe_path("ca_file", forwarder.ca_file),
        cert_file=safe_path("cert_file", forwarder.cert_file),
        key_file=safe_path("key_file", forwarder.key_file),
        spool_dir=spool,
        queue_size=str(safe_int("queue_size", forwarder.queue_size, 100, 1_000_000)),
        queue_max_disk_bytes=str(safe_int("queue_max_disk_bytes", forwarder.queue_max_disk_bytes,
                                      1024 * 1024, 1 << 50)),
        resume_interval_s=str(safe_int("resume_interval_s", forwarder.resume_interval_s, 1, 3600)),
        resume_interval_max_s=str(safe_int("resume_interval_max_s", forwarder.resume_interval_max_s,
                                       forwarder.resume_interval_s, 86400)),
        audit_app=AUDIT_APP_NAME,
        audit_uid=str(safe_int("audit_uid", forwarder.audit_uid, 0, 2**32 - 2)),
        audit_msgid=AUDIT_MSGID,
        audit_socket=safe_path("audit_socket", forwarder.audit_socket),
    )


def render_message_size_dropin() -> str:
    """``/etc/rsyslog.d/59-convocate-message-size.conf``: rsyslog's maxMessageSize for the audit records.

    The one ``global()`` convocate sets, in a file of its own that init-shell and init-agent write
    identically (a host that is both has it once; rsyslog refuses a global parameter set twice).
    Debian's rsyslog.conf does not set it. It applies to every input of the host (rsyslog 8.2302 has
    no per-input limit for imuxsock), which only lets longer messages through uncut.
    """
    return (f"# {rsyslog_dropin_dir(Paths()) / MESSAGE_SIZE_DROPIN}: written by `convocate-host init-shell` and\n"
            "# `init-agent` (issue 19): audit records of a 64 KiB `send` are longer than rsyslog's default\n"
            "# 8 KiB and must reach the shell host whole, byte for byte.\n"
            f'global(maxMessageSize="{MAX_MESSAGE_SIZE}")\n')


def rsyslog_account(rsyslog_conf: str) -> tuple[str, str]:
    """The user and group rsyslogd runs as, from the text of a host's ``/etc/rsyslog.conf``.

    Debian 12 runs it as root; Ubuntu drops to ``syslog`` (``$PrivDropToUser syslog``), and there the
    server/client keys must be readable by that group (mode 0640 ``root:syslog``) and the log directory
    owned by that user, because rsyslog reads its TLS files after dropping privileges.

    Returns:
        ``(user, group)``; ``("root", "root")`` when the file drops no privileges. On such a host use
        ``replace(ShellListener.from_paths(...), file_owner=user)``.
    """
    user = group = "root"
    for line in rsyslog_conf.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) == 2 and words[0].lower() == "$privdroptouser":
            user = words[1]
        elif len(words) == 2 and words[0].lower() == "$privdroptogroup":
            group = words[1]
    return user, group
