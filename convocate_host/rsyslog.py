"""The rsyslog configuration of log forwarding: session containers (agent host) to the shell host, over TLS.

Two drop-ins for ``/etc/rsyslog.d/`` (RainerScript, rsyslog 8.2302 with ``rsyslog-gnutls`` on Debian 12):

Agent host (:func:`render_agent_dropin`, written by ``convocate-host init-agent``)
    Session containers run with Docker's ``syslog`` log driver (``syslog-address=unixgram://<socket>``,
    ``syslog-format=rfc5424``, ``tag=convocate-<session uuid>``, see :func:`docker_log_options`). Docker 20.10
    sends one datagram per output line, observed as::

        <30>1 2026-12-02T05:13:19Z HOST convocate-<uuid> DOCKERD_PID convocate-<uuid> - the line\\n

    (facility daemon; severity info for stdout, err for stderr; second resolution; the tag is both APP-NAME
    and MSGID). An ``imuxsock`` input on its own socket (:attr:`Paths.agent_log_socket`, not ``/dev/log``)
    reads them into the ruleset ``convocate_sessions``, so they never reach the host's own rules. One
    ``omfwd`` action sends them to the shell host over TCP with TLS (``gtls``, ``x509/name``: the shell's
    certificate must chain to the cluster CA and name :data:`~convocate_host.pki.SHELL_PEER_NAME`, with
    serverAuth), octet-counted framing, re-written by the template ``convocate_forward`` as RFC 5424 with the
    **agent ID as HOSTNAME**: ``<PRI>1 TIMESTAMP <agent-id> APP-NAME PROCID - - MSG`` (MSGID dropped: Docker's is
    the 46-character tag, RFC 5424 allows 32). The action has a disk-assisted queue: while the shell is
    unreachable messages wait in memory (``queue.size``), then in ``queue.spoolDirectory`` up to
    ``queue.maxDiskSpace`` bytes, and survive an rsyslog restart (``queue.saveOnShutdown``); the action retries
    forever (``action.resumeRetryCount="-1"``). When even the disk share is full, new messages are dropped at
    once (``queue.timeoutEnqueue="0"``) rather than blocking the socket, which would block the containers'
    output. Delivery is at least once: plain TCP syslog has no acknowledgements, and when the connection comes
    back omfwd sends the batch it was retrying again, so a few queued lines may arrive twice (observed).
    Order is not kept across an outage: the retried batch comes first, then the queue from its start, and
    lines read back from the spool after a restart may come after newer ones (all observed); order them by
    their RFC 5424 TIMESTAMP where it matters.

    Docker connects to the socket when a container starts (a missing socket fails the start) and reconnects
    after rsyslog re-creates it on a restart; lines written while rsyslog is down are lost (never blocked).
    imuxsock makes the socket mode 0666, so any local user of the agent host can add lines to the stream.

Shell host (:func:`render_shell_dropin` by ``convocate-host init-shell``, :func:`render_shell_agent_dropin` by ``init-agent``)
    One ``imtcp`` input **per agent**, each on its own TCP port (:func:`choose_log_port`, from
    :data:`FIRST_PORT`), TLS only (``gtls``, mode 1), requiring a client certificate that chains to the
    cluster CA, carries clientAuth and names exactly that agent (``x509/name``, permitted peer
    ``<agent-id>.agents.convocate``, no wildcard). The input's ruleset knows whose input it is: a message
    whose HOSTNAME is that agent's ID goes to ``/var/log/convocate-agent/<agent-id>.log`` (a static file
    name, never built from the message); a message naming anything else, another agent's ID included, is
    refused from that file and goes to ``/var/log/convocate-agent/_rejected.log`` together with the name of
    the input it came in by, i.e. the certificate that sent it (``_`` is not in the agent ID alphabet, so no
    agent can own that name). Every ruleset ends with ``stop`` and is bound to its input, so none of it
    reaches ``/var/log/syslog``. Lines read ``TIMESTAMP convocate-<uuid>: the line`` (the agent's reception
    time, RFC 3339 with microseconds).

    Why a port per agent: rsyslog 8.2302 (Debian 12) exposes no property holding the TLS peer's
    certificate name (rsyslog issues #436, #3567 and #1597, all still open), so a single listener can
    check that a sender holds *a* cluster certificate but not which one sent a given message. What it does
    check is ``permittedPeer`` per ``input()``, and which input a message arrived on (its ruleset): one
    input per agent with that agent's name as the only permitted peer ties every message to the sender's
    certificate. The shared drop-in (templates, the reject ruleset, ``imtcp``) comes from init-shell; each
    agent's drop-in (``61-convocate-agent-<id>.conf``) from its init-agent, with the port recorded in the
    shell's registry (``/etc/convocate/agents/<id>/log-port``) so a re-run keeps it.

Coexistence with Debian's ``/etc/rsyslog.conf``: it loads ``imuxsock`` and ``imklog`` and sets legacy
defaults (``$FileOwner``, ``$FileCreateMode``, ``$WorkDirectory``). The drop-ins load no module that file
loads (the agent's only adds an ``imuxsock`` input; the shell's loads ``imtcp``, which Debian leaves
commented out), set no ``global()`` parameter, and give every TLS file, queue directory, file mode and owner
on their own input or action (``streamDriver.CAFile`` & co. on ``input()`` and ``action()`` exist since
8.2108), so the host's ``DefaultNetstreamDriver*`` settings, if any, are untouched.

Lines longer than rsyslog's ``maxMessageSize`` are truncated; the only global convocate sets raises it to
:data:`MAX_MESSAGE_SIZE` (:func:`render_message_size_dropin`, its own drop-in) for the audit records below.
Docker itself splits lines at 16 KiB.

Audit records (issue 19)
    The agent sends each audit record (``convocate_agent.audit``) as an RFC 5424 datagram to a socket of
    its own, :attr:`Paths.agent_audit_socket` (``audit.sock`` beside the session socket), read by a second
    imuxsock input into the ruleset ``convocate_audit``. It forwards only messages whose sender's UID, as
    the kernel reports it (imuxsock's trusted property ``$!uid``, from SCM_CREDENTIALS), is the agent's
    user (:attr:`AgentForwarder.audit_uid`): the socket is 0666 like the other. Its own ``omfwd`` action
    (own connection, own disk-assisted queue ``convocate-audit``) writes them with APP-NAME
    ``convocate-audit`` and MSGID :data:`AUDIT_MSGID`, constants of its template; the session template
    always writes MSGID ``-``, so nothing that enters by the session socket (a session line, a local
    user's datagram claiming that APP-NAME) can look like an audit record on the shell. (A filter in the
    session ruleset would do too, but any statement before its action changes how rsyslog 8.2302 drains
    the spooled queue after a restart: lines of one run then come out of order.) The shell's per-agent
    ruleset writes the MSG of records with both marks, alone, to ``<agent-id>.audit.jsonl``
    (:data:`AUDIT_LOG`) and not to ``<agent-id>.log``: the agent's canonical JSON is printable ASCII, which
    rsyslog leaves unchanged, so the copy is byte-identical and its hash chain verifies
    (``convocate audit --verify --file``).

Every path is a parameter so tests run both daemons under a temporary directory; the defaults come from
:class:`~convocate.common.paths.Paths`. Nothing here writes a file: ``convocate-host`` writes the texts and
the certificates on the target hosts (modes in :data:`FILE_MODES`), then validates the whole configuration
with ``rsyslogd -N1`` and restarts rsyslog.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from convocate.common import messages
from convocate.common import syslog as common_syslog
from convocate.common.auditchain import AUDIT_APP_NAME
from convocate.common.errors import ConfigError
from convocate.common.paths import CLAUDE_UID, Paths
from convocate_host.pki import SHELL_PEER_NAME, agent_peer_name, split_host_names, validate_agent_id

#: First TCP port of the shell host's per-agent TLS listeners: 6514, syslog over TLS (RFC 5425 §4.1).
FIRST_PORT = 6514
#: How many agents' listeners the port range holds (agents beyond it need a larger range of their own).
PORT_COUNT = 256
#: Drop-in file names under ``/etc/rsyslog.d/``; each agent's listener is :func:`shell_agent_dropin`.
SHELL_DROPIN = "60-convocate-shell.conf"
SHELL_AGENT_DROPIN = "61-convocate-agent-{agent_id}.conf"
AGENT_DROPIN = "60-convocate-agent.conf"
#: The one global both hosts need (issue 19): written, identical, by init-shell and init-agent, so a host
#: that is both sets it once. Sorted before the other drop-ins.
MESSAGE_SIZE_DROPIN = "59-convocate-message-size.conf"
#: rsyslog's maxMessageSize on both hosts, in bytes (its default, 8 KiB, would cut an audit record of a
#: 64 KiB ``send``); above the longest forwarded audit datagram (``convocate_agent.audit.FORWARD_MAX``).
MAX_MESSAGE_SIZE = 256 * 1024
#: Where a shell host files an agent's audit records (the MSG alone, byte-identical to the agent's line),
#: in the log directory (:meth:`Paths.forwarded_audit_log`).
AUDIT_LOG = "{agent_id}.audit.jsonl"
#: The MSGID of forwarded audit records: a constant of the agent's audit template, never of the session
#: template (which writes "-"), so the shell can tell them apart whatever a session line claims.
AUDIT_MSGID = "audit"
#: The audit socket's file name beside the session socket (:attr:`Paths.agent_audit_socket`).
AUDIT_SOCKET_NAME = "audit.sock"
#: File names in the shell's ``/etc/convocate/rsyslog-ca/`` and the agent's ``/etc/convocate-agent/rsyslog-tls/``.
CA_CERT = "ca.pem"
CA_KEY = "ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"
CLIENT_CERT = "client.pem"
CLIENT_KEY = "client.key"
#: Where messages whose HOSTNAME is not an agent ID go, in the log directory.
REJECT_LOG = "_rejected.log"
#: Permission bits ``convocate-host`` gives each file: certificates are public, keys are not.
FILE_MODES = {CA_CERT: 0o644, CA_KEY: 0o600, SERVER_CERT: 0o644, SERVER_KEY: 0o600, CLIENT_CERT: 0o644,
              CLIENT_KEY: 0o600, SHELL_DROPIN: 0o644, SHELL_AGENT_DROPIN: 0o644, AGENT_DROPIN: 0o644,
              MESSAGE_SIZE_DROPIN: 0o644}
#: The owner of the session log directory and files on a Debian shell host: written by rsyslogd (root),
#: readable by group adm like the rest of /var/log.
LOG_OWNER = "root"
LOG_GROUP = "adm"
LOG_DIR_MODE = 0o750
LOG_FILE_MODE = 0o640

# A value written into a double-quoted RainerScript string: no quote, backslash, "$" or control character
# can come through, so a parameter can never end the string or start a new statement.
_SAFE_PATH = re.compile(r"/[A-Za-z0-9._/+@:,=-]*")
_SAFE_WORD = re.compile(r"[A-Za-z0-9._-]+")


def _path(field: str, value: Path | str) -> str:
    text = str(value)
    if not _SAFE_PATH.fullmatch(text) or "/../" in f"{text}/":
        raise ConfigError(messages.BAD_RSYSLOG_VALUE.format(
            field=field, value=text, rule="must be an absolute path of letters, digits and ._/+@:,=-"))
    return text


def _word(field: str, value: str | None) -> str | None:
    if value is not None and not _SAFE_WORD.fullmatch(value):
        raise ConfigError(messages.BAD_RSYSLOG_VALUE.format(field=field, value=value,
                                                            rule="must be a user or group name"))
    return value


def _int(field: str, value: int, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(messages.BAD_RSYSLOG_VALUE.format(field=field, value=value,
                                                            rule=f"must be an integer in {low}..{high}"))
    return value


def _host(field: str, value: str) -> str:
    try:
        dns, ips = split_host_names([value])
    except ConfigError as e:
        raise ConfigError(messages.BAD_RSYSLOG_VALUE.format(field=field, value=value,
                                                            rule="is not a host name or an IP address")) from e
    return (dns or ips)[0]


def _fill(template: str, **values: str) -> str:
    text = template
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    leftover = re.search(r"@[a-z_]+@", text)
    assert leftover is None, f"unfilled placeholder {leftover.group(0)}"
    return text


# --- layout --------------------------------------------------------------------------------------------

def rsyslog_dropin_dir(paths: Paths) -> Path:
    """``/etc/rsyslog.d`` (:attr:`Paths.rsyslog_dropin_dir`)."""
    return paths.rsyslog_dropin_dir


def session_log_dir(paths: Paths) -> Path:
    """``/var/log/convocate-agent`` (:attr:`Paths.forwarded_log_dir`)."""
    return paths.forwarded_log_dir


def rsyslog_spool_dir(paths: Paths) -> Path:
    """``/var/spool/rsyslog`` (:attr:`Paths.rsyslog_spool_dir`)."""
    return paths.rsyslog_spool_dir


def docker_log_options(session_id: str, socket: Path | None = None) -> dict[str, str]:
    """The Docker syslog driver options of a session (:func:`convocate.common.syslog.docker_log_options`).

    Args:
        session_id: The session's UUID.
        socket: The socket as dockerd sees it; :attr:`Paths.agent_log_socket` of ``Paths.from_env()``
            when ``None``.

    Raises:
        BadRequest: ``session_id`` is not a UUIDv4.
    """
    return common_syslog.docker_log_options(session_id, str(Paths.from_env().agent_log_socket
                                                             if socket is None else socket))


# --- shell host ------------------------------------------------------------------------------------------

def port_range(first: int = FIRST_PORT, count: int = PORT_COUNT) -> range:
    """The shell host's per-agent TLS log ports: ``first`` .. ``first + count - 1``.

    Raises:
        ConfigError: the range leaves 1..65535.
    """
    _int("log port", first, 1, 65535 - count + 1)
    return range(first, first + count)


def firewall_rule(first: int = FIRST_PORT, count: int = PORT_COUNT) -> str:
    """The ufw rule that opens the range (``6514:6769/tcp``; ufw(8) takes ``PORT:PORT`` with a protocol)."""
    ports = port_range(first, count)
    return f"{ports[0]}:{ports[-1]}/tcp"


def choose_log_port(agent_id: str, recorded: int | None, others: dict[str, int], listening: set[int],
                    ports: range) -> int:
    """The shell's TLS log port of an agent: the one it has, else the lowest free one (idempotent init-agent).

    Args:
        agent_id: The agent.
        recorded: Its port from the registry (``/etc/convocate/agents/<id>/log-port``), or ``None``.
        others: The other registered agents' ports, by agent ID.
        listening: TCP ports something listens on at the shell host now (``ss -Htln``).
        ports: The allowed range (:func:`port_range`).

    Returns:
        ``recorded`` when it is in ``ports`` and no other agent holds it (its own listener may be among
        ``listening``); else the lowest port of ``ports`` that no other agent holds and nothing listens on.

    Raises:
        ConfigError: ``agent_id`` is malformed or every port of the range is taken.
    """
    validate_agent_id(agent_id)
    held = {port for other, port in others.items() if other != agent_id}
    if recorded is not None and recorded in ports and recorded not in held:
        return recorded
    for port in ports:
        if port not in held and port not in listening:
            return port
    raise ConfigError(messages.LOG_PORTS_EXHAUSTED.format(agent=agent_id, first=ports[0], last=ports[-1]))


def shell_agent_dropin(agent_id: str) -> str:
    """File name of an agent's listener on the shell host, ``61-convocate-agent-<agent-id>.conf``."""
    return SHELL_AGENT_DROPIN.format(agent_id=validate_agent_id(agent_id))


@dataclass(frozen=True)
class ShellListener:
    """The shell host's TLS listeners (one per agent) and where they write.

    Attributes:
        ca_file: The cluster CA certificate (``rsyslog-ca/ca.pem``).
        cert_file: The shell's server certificate (``rsyslog-ca/server.pem``).
        key_file: Its key (``rsyslog-ca/server.key``).
        log_dir: The per-agent log directory.
        address: Listen address; ``None`` listens on every address.
        file_owner: Owner of the log files and directories rsyslog creates; ``None`` keeps rsyslog's own
            user. Must be the user rsyslogd runs as unless that is root (see :func:`rsyslog_account`).
        file_group: Their group; ``None`` keeps rsyslog's.
        dir_mode: Mode of the directories rsyslog creates.
        file_mode: Mode of the log files rsyslog creates.
    """

    ca_file: Path
    cert_file: Path
    key_file: Path
    log_dir: Path
    address: str | None = None
    file_owner: str | None = LOG_OWNER
    file_group: str | None = LOG_GROUP
    dir_mode: int = LOG_DIR_MODE
    file_mode: int = LOG_FILE_MODE

    @classmethod
    def from_paths(cls, paths: Paths, *, address: str | None = None) -> ShellListener:
        """The listeners of a shell host laid out by ``paths`` (``/etc/convocate/rsyslog-ca/*``)."""
        ca_dir = paths.rsyslog_ca_dir
        return cls(ca_file=ca_dir / CA_CERT, cert_file=ca_dir / SERVER_CERT, key_file=ca_dir / SERVER_KEY,
                   log_dir=session_log_dir(paths), address=address)


_SHELL_DROPIN = """\
# @dropin@: receive convocate's session logs from the agent hosts (DESIGN §5).
# Written by `convocate-host init-shell`; a re-run overwrites changes.
#
# What every agent's listener shares: imtcp, the line formats and the ruleset of refused messages.
# The listeners themselves are the files @agent_dropin@, one per agent,
# written by `convocate-host init-agent`: each is TLS only on a port of its own and admits only the
# certificate of its agent, and files under that agent only what names that agent; anything else lands
# in @log_dir@/@reject@ with the input (the certificate) it came by.
# TLS files, modes and owners are set on the inputs and the actions, not in global(), and the only
# module loaded is imtcp, which Debian's /etc/rsyslog.conf does not load.

@imtcp@

template(name="convocate_agent_line" type="list") {
    property(name="timestamp" dateFormat="rfc3339")
    constant(value=" ")
    property(name="app-name")
    constant(value=": ")
    property(name="msg" droplastlf="on")
    constant(value="\\n")
}

# An audit record (APP-NAME @audit_app@): the MSG alone, the agent's line byte for byte.
template(name="convocate_agent_audit" type="list") {
    property(name="msg" droplastlf="on")
    constant(value="\\n")
}

template(name="convocate_agent_reject" type="list") {
    property(name="timegenerated" dateFormat="rfc3339")
    constant(value=" from ")
    property(name="fromhost-ip")
    constant(value=" by ")
    property(name="inputname")
    constant(value=" hostname=\\"")
    property(name="hostname" format="json")
    constant(value="\\" ")
    property(name="app-name" format="json")
    constant(value=": ")
    property(name="msg" droplastlf="on")
    constant(value="\\n")
}

ruleset(name="convocate_agents_rejected") {
    action(type="omfile" name="convocate_agent_reject" file="@log_dir@/@reject@"
           template="convocate_agent_reject"
           createDirs="on" dirCreateMode="@dir_mode@" fileCreateMode="@file_mode@"@owner@)
    stop
}
"""

_SHELL_AGENT_DROPIN = """\
# @dropin@: the TLS listener of agent @agent_id@'s session logs (issue 14 item 7).
# Written by `convocate-host init-agent`; a re-run overwrites changes. Needs @shared@.
#
# tcp/@port@ admits one client certificate: @peer@, issued by the cluster CA (x509/name,
# clientAuth). What arrives here was sent with that certificate, so it is agent @agent_id@'s whatever
# the message says: it goes to @log_dir@/@agent_id@.log when its HOSTNAME is @agent_id@, and to
# @log_dir@/@reject@ (with this input's name) when it names anything else. The agent's audit records
# (APP-NAME @audit_app@ and MSGID @audit_msgid@, which only the agent host's audit template writes,
# for its own user's messages only) go to @log_dir@/@audit_file@ instead, the MSG alone, one per line.

ruleset(name="convocate_agent_@agent_id@") {
    if $hostname == "@agent_id@" and $app-name == "@audit_app@" and $msgid == "@audit_msgid@" then {
        action(type="omfile" name="convocate_agent_@agent_id@_audit" file="@log_dir@/@audit_file@"
               template="convocate_agent_audit"
               createDirs="on" dirCreateMode="@dir_mode@" fileCreateMode="@file_mode@"@owner@)
    } else if $hostname == "@agent_id@" then {
        action(type="omfile" name="convocate_agent_@agent_id@" file="@log_dir@/@agent_id@.log"
               template="convocate_agent_line"
               createDirs="on" dirCreateMode="@dir_mode@" fileCreateMode="@file_mode@"@owner@)
    } else {
        call convocate_agents_rejected
    }
    stop
}

input(type="imtcp" name="convocate_agent_@agent_id@" port="@port@"@address@ ruleset="convocate_agent_@agent_id@"
      keepAlive="on" maxFrameSize="@max_frame@"
      streamDriver.name="gtls" streamDriver.mode="1"
      streamDriver.authMode="x509/name" permittedPeer=["@peer@"]
      streamDriver.checkExtendedKeyPurpose="on" streamDriver.permitExpiredCerts="off"
      streamDriver.CAFile="@ca_file@"
      streamDriver.CertFile="@cert_file@"
      streamDriver.KeyFile="@key_file@")
"""


def _shell_values(listener: ShellListener) -> dict[str, str]:
    owner = ""
    if _word("file_owner", listener.file_owner):
        owner += f' fileOwner="{listener.file_owner}" dirOwner="{listener.file_owner}"'
    if _word("file_group", listener.file_group):
        owner += f' fileGroup="{listener.file_group}" dirGroup="{listener.file_group}"'
    indent = "\n" + " " * 14
    return {
        "log_dir": _path("log_dir", listener.log_dir).rstrip("/") or "/",
        "reject": REJECT_LOG,
        "dir_mode": f"{_int('dir_mode', listener.dir_mode, 0, 0o7777):04o}",
        "file_mode": f"{_int('file_mode', listener.file_mode, 0, 0o7777):04o}",
        "owner": f"{indent}{owner}" if owner else "",
    }


#: The shared drop-in's module line while no agent has a listener yet: ``rsyslogd -N1`` refuses a
#: loaded imtcp that has no input ("module loaded, but no listeners defined").
_IMTCP_LATER = "# imtcp is loaded here once the first agent's listener exists (convocate-host init-agent)."


def render_shell_dropin(listener: ShellListener, *, load_imtcp: bool = True) -> str:
    """The shell host's shared drop-in, ``/etc/rsyslog.d/60-convocate-shell.conf`` (no listener of its own).

    Args:
        listener: TLS files, the log directory, its owner and modes.
        load_imtcp: Load imtcp, which the agents' listeners need; False while there is none (init-shell
            on a new shell host), since rsyslog refuses a loaded imtcp without an input.

    Returns:
        The RainerScript text.

    Raises:
        ConfigError: a path is not absolute or holds a character that cannot go in a RainerScript string,
            or a user/group name or mode is malformed.
    """
    values = _shell_values(listener)
    values["owner"] = values["owner"].replace("\n" + " " * 14, "\n" + " " * 10)
    dropins = rsyslog_dropin_dir(Paths())
    return _fill(_SHELL_DROPIN, dropin=str(dropins / SHELL_DROPIN),
                 agent_dropin=str(dropins / SHELL_AGENT_DROPIN.format(agent_id="<agent-id>")),
                 imtcp='module(load="imtcp")' if load_imtcp else _IMTCP_LATER, audit_app=AUDIT_APP_NAME, **values)


def render_shell_agent_dropin(listener: ShellListener, agent_id: str, port: int) -> str:
    """An agent's TLS listener on the shell host, ``/etc/rsyslog.d/61-convocate-agent-<agent-id>.conf``.

    Args:
        listener: TLS files, the log directory, its owner and modes, the listen address.
        agent_id: The agent; only the certificate ``<agent-id>.agents.convocate`` may connect.
        port: This agent's TCP port (:func:`choose_log_port`).

    Returns:
        The RainerScript text; it needs :func:`render_shell_dropin`'s file beside it.

    Raises:
        ConfigError: the agent ID, a path, the port, the address or a user/group name is malformed.
    """
    dropins = rsyslog_dropin_dir(Paths())
    return _fill(
        _SHELL_AGENT_DROPIN,
        dropin=str(dropins / shell_agent_dropin(agent_id)),
        shared=str(dropins / SHELL_DROPIN),
        agent_id=agent_id,
        peer=agent_peer_name(agent_id),
        audit_app=AUDIT_APP_NAME,
        audit_file=AUDIT_LOG.format(agent_id=agent_id),
        audit_msgid=AUDIT_MSGID,
        max_frame=str(MAX_MESSAGE_SIZE),
        port=str(_int("port", port, 1, 65535)),
        address=f' address="{_host("address", listener.address)}"' if listener.address else "",
        ca_file=_path("ca_file", listener.ca_file),
        cert_file=_path("cert_file", listener.cert_file),
        key_file=_path("key_file", listener.key_file),
        **_shell_values(listener),
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
    spool = _path("spool_dir", forwarder.spool_dir).rstrip("/") or "/"
    dropin = (_AGENT_DROPIN.replace("@forward_sessions@", _forward_action("convocate_forward", "convocate-forward", 4))
              .replace("@forward_audit@", _forward_action("convocate_audit_forward", "convocate-audit", 8)))
    return _fill(
        dropin,
        dropin=str(rsyslog_dropin_dir(Paths()) / AGENT_DROPIN),
        agent_id=validate_agent_id(forwarder.agent_id),
        shell_address=_host("shell_address", forwarder.shell_address),
        shell_port=str(_int("shell_port", forwarder.shell_port, 1, 65535)),
        shell_peer_name=_host("shell_peer_name", forwarder.shell_peer_name),
        socket=_path("socket", forwarder.socket),
        ca_file=_path("ca_file", forwarder.ca_file),
        cert_file=_path("cert_file", forwarder.cert_file),
        key_file=_path("key_file", forwarder.key_file),
        spool_dir=spool,
        queue_size=str(_int("queue_size", forwarder.queue_size, 100, 1_000_000)),
        queue_max_disk_bytes=str(_int("queue_max_disk_bytes", forwarder.queue_max_disk_bytes,
                                      1024 * 1024, 1 << 50)),
        resume_interval_s=str(_int("resume_interval_s", forwarder.resume_interval_s, 1, 3600)),
        resume_interval_max_s=str(_int("resume_interval_max_s", forwarder.resume_interval_max_s,
                                       forwarder.resume_interval_s, 86400)),
        audit_app=AUDIT_APP_NAME,
        audit_uid=str(_int("audit_uid", forwarder.audit_uid, 0, 2**32 - 2)),
        audit_msgid=AUDIT_MSGID,
        audit_socket=_path("audit_socket", forwarder.audit_socket),
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
