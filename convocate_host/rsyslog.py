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

    Docker connects to the socket when a container starts (a missing socket fails the start) and reconnects
    after rsyslog re-creates it on a restart; lines written while rsyslog is down are lost (never blocked).
    imuxsock makes the socket mode 0666, so any local user of the agent host can add lines to the stream.

Shell host (:func:`render_shell_dropin`, written by ``convocate-host init-shell``)
    An ``imtcp`` input on tcp/514 with TLS only (``gtls``, mode 1), requiring a client certificate that chains
    to the cluster CA, carries clientAuth and names a host under ``agents.convocate`` (``x509/name``, permitted
    peer ``*.agents.convocate``). Its ruleset ``convocate_agents`` writes each message to
    ``/var/log/convocate-agent/<HOSTNAME>.log`` only when HOSTNAME is an agent ID (``^[a-z0-9]{8}$``, checked
    with ``re_match``, and the path property filtered with ``securepath="replace"`` as well); anything else
    goes to ``/var/log/convocate-agent/_rejected.log`` (``_`` is not in the agent ID alphabet, so no agent
    can own that name). The ruleset ends with ``stop`` and is bound to the input, so none of it reaches
    ``/var/log/syslog``. Lines read ``TIMESTAMP convocate-<uuid>: the line`` (the agent's reception time,
    RFC 3339 with microseconds).

    rsyslog (8.2302) exposes no property with the TLS peer's certificate name (rsyslog issues #436, #3567),
    so the shell cannot check that HOSTNAME is the sender's own agent ID: the check is that the sender holds
    a client certificate of this cluster, and that the name it gives stays inside the log directory.

Coexistence with Debian's ``/etc/rsyslog.conf``: it loads ``imuxsock`` and ``imklog`` and sets legacy
defaults (``$FileOwner``, ``$FileCreateMode``, ``$WorkDirectory``). The drop-ins load no module that file
loads (the agent's only adds an ``imuxsock`` input; the shell's loads ``imtcp``, which Debian leaves
commented out), set no ``global()`` parameter, and give every TLS file, queue directory, file mode and owner
on their own input or action (``streamDriver.CAFile`` & co. on ``input()`` and ``action()`` exist since
8.2108), so the host's ``DefaultNetstreamDriver*`` settings, if any, are untouched.

Lines longer than rsyslog's ``maxMessageSize`` (8 KiB by default, a global this drop-in leaves alone) are
truncated; Docker itself splits lines at 16 KiB.

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
from convocate.common.errors import ConfigError
from convocate.common.paths import Paths
from convocate_host.pki import AGENT_NAME_SUFFIX, SHELL_PEER_NAME, split_host_names, validate_agent_id

#: TCP port of the shell host's TLS listener (DESIGN §2: "rsyslog/TLS tcp/514").
DEFAULT_PORT = 514
#: Drop-in file names under ``/etc/rsyslog.d/``.
SHELL_DROPIN = "60-convocate-shell.conf"
AGENT_DROPIN = "60-convocate-agent.conf"
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
              CLIENT_KEY: 0o600, SHELL_DROPIN: 0o644, AGENT_DROPIN: 0o644}
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

@dataclass(frozen=True)
class ShellListener:
    """The shell host's TLS listener and where it writes.

    Attributes:
        ca_file: The cluster CA certificate (``rsyslog-ca/ca.pem``).
        cert_file: The shell's server certificate (``rsyslog-ca/server.pem``).
        key_file: Its key (``rsyslog-ca/server.key``).
        log_dir: The per-agent log directory.
        port: TCP port, 1-65535.
        address: Listen address; ``None`` listens on every address.
        permitted_peer: The client certificate name pattern accepted (rsyslog ``permittedPeer``).
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
    port: int = DEFAULT_PORT
    address: str | None = None
    permitted_peer: str = f"*.{AGENT_NAME_SUFFIX}"
    file_owner: str | None = LOG_OWNER
    file_group: str | None = LOG_GROUP
    dir_mode: int = LOG_DIR_MODE
    file_mode: int = LOG_FILE_MODE

    @classmethod
    def from_paths(cls, paths: Paths, *, port: int = DEFAULT_PORT, address: str | None = None) -> ShellListener:
        """The listener of a shell host laid out by ``paths`` (``/etc/convocate/rsyslog-ca/*``)."""
        ca_dir = paths.rsyslog_ca_dir
        return cls(ca_file=ca_dir / CA_CERT, cert_file=ca_dir / SERVER_CERT, key_file=ca_dir / SERVER_KEY,
                   log_dir=session_log_dir(paths), port=port, address=address)


_SHELL_DROPIN = """\
# @dropin@: receive convocate's session logs from the agent hosts (DESIGN §5).
# Written by `convocate-host init-shell`; a re-run overwrites changes.
#
# TLS only (gtls) on tcp/@port@: a client must present a certificate issued by the cluster CA for
# <agent-id>.@suffix@ (x509/name, clientAuth). Each message's HOSTNAME is the agent ID (the
# agents' template puts it there); it names @log_dir@/<agent-id>.log only when it is 8 characters
# of [a-z0-9], anything else lands in @reject@. The ruleset is bound to this input and
# ends with stop: nothing of it reaches the default rules (/var/log/syslog).
# TLS files, modes and owners are set on the input and the actions, not in global(), and the only
# module loaded is imtcp, which Debian's /etc/rsyslog.conf does not load.

module(load="imtcp")

template(name="convocate_agent_file" type="list") {
    constant(value="@log_dir@/")
    property(name="hostname" securepath="replace")
    constant(value=".log")
}

template(name="convocate_agent_line" type="list") {
    property(name="timestamp" dateFormat="rfc3339")
    constant(value=" ")
    property(name="app-name")
    constant(value=": ")
    property(name="msg" droplastlf="on")
    constant(value="\\n")
}

template(name="convocate_agent_reject" type="list") {
    property(name="timegenerated" dateFormat="rfc3339")
    constant(value=" from ")
    property(name="fromhost-ip")
    constant(value=" hostname=\\"")
    property(name="hostname" format="json")
    constant(value="\\" ")
    property(name="app-name" format="json")
    constant(value=": ")
    property(name="msg" droplastlf="on")
    constant(value="\\n")
}

ruleset(name="convocate_agents") {
    if re_match($hostname, '^[a-z0-9]{8}$') then {
        action(type="omfile" name="convocate_agent_log" dynaFile="convocate_agent_file"
               template="convocate_agent_line" dynaFileCacheSize="100"
               createDirs="on" dirCreateMode="@dir_mode@" fileCreateMode="@file_mode@"@owner@)
    } else {
        action(type="omfile" name="convocate_agent_reject" file="@log_dir@/@reject@"
               template="convocate_agent_reject"
               createDirs="on" dirCreateMode="@dir_mode@" fileCreateMode="@file_mode@"@owner@)
    }
    stop
}

input(type="imtcp" name="convocate_agents" port="@port@"@address@ ruleset="convocate_agents"
      keepAlive="on"
      streamDriver.name="gtls" streamDriver.mode="1"
      streamDriver.authMode="x509/name" permittedPeer=["@permitted_peer@"]
      streamDriver.checkExtendedKeyPurpose="on" streamDriver.permitExpiredCerts="off"
      streamDriver.CAFile="@ca_file@"
      streamDriver.CertFile="@cert_file@"
      streamDriver.KeyFile="@key_file@")
"""


def render_shell_dropin(listener: ShellListener) -> str:
    """The shell host's drop-in, ``/etc/rsyslog.d/60-convocate-shell.conf``.

    Args:
        listener: Port, address, TLS files and the log directory.

    Returns:
        The RainerScript text.

    Raises:
        ConfigError: a path is not absolute or holds a character that cannot go in a RainerScript string,
            the port is out of range, the address or a user/group name is malformed.
    """
    owner = ""
    if _word("file_owner", listener.file_owner):
        owner += f' fileOwner="{listener.file_owner}" dirOwner="{listener.file_owner}"'
    if _word("file_group", listener.file_group):
        owner += f' fileGroup="{listener.file_group}" dirGroup="{listener.file_group}"'
    owner = f"\n              {owner}" if owner else ""
    peer = listener.permitted_peer
    name = peer.removeprefix("*.")
    if _host("permitted_peer", name) != name:
        raise ConfigError(messages.BAD_RSYSLOG_VALUE.format(field="permitted_peer", value=peer,
                                                            rule="is not a host name or *.domain"))
    log_dir = _path("log_dir", listener.log_dir).rstrip("/") or "/"
    return _fill(
        _SHELL_DROPIN,
        dropin=str(rsyslog_dropin_dir(Paths()) / SHELL_DROPIN),
        suffix=AGENT_NAME_SUFFIX,
        port=str(_int("port", listener.port, 1, 65535)),
        address=f' address="{_host("address", listener.address)}"' if listener.address else "",
        log_dir=log_dir,
        reject=REJECT_LOG,
        dir_mode=f"{_int('dir_mode', listener.dir_mode, 0, 0o7777):04o}",
        file_mode=f"{_int('file_mode', listener.file_mode, 0, 0o7777):04o}",
        owner=owner,
        permitted_peer=peer,
        ca_file=_path("ca_file", listener.ca_file),
        cert_file=_path("cert_file", listener.cert_file),
        key_file=_path("key_file", listener.key_file),
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
        shell_port: The shell listener's TCP port.
        shell_peer_name: The name the shell's server certificate must carry.
        queue_size: Messages held in memory before the queue spills to disk.
        queue_max_disk_bytes: Disk the queue may use, in bytes; beyond it new messages are dropped.
        resume_interval_s: Seconds between reconnection attempts while the shell is unreachable
            (rsyslog stretches it after every 10 failures, up to ``resume_interval_max_s``).
        resume_interval_max_s: The longest wait between attempts, in seconds.
    """

    agent_id: str
    shell_address: str
    socket: Path
    ca_file: Path
    cert_file: Path
    key_file: Path
    spool_dir: Path
    shell_port: int = DEFAULT_PORT
    shell_peer_name: str = SHELL_PEER_NAME
    queue_size: int = 10000
    queue_max_disk_bytes: int = 512 * 1024 * 1024
    resume_interval_s: int = 10
    resume_interval_max_s: int = 120

    @classmethod
    def from_paths(cls, paths: Paths, agent_id: str, shell_address: str, *,
                   shell_port: int = DEFAULT_PORT) -> AgentForwarder:
        """The forwarder of an agent host laid out by ``paths`` (``/etc/convocate-agent/rsyslog-tls/*``)."""
        tls = paths.agent_rsyslog_tls
        return cls(agent_id=agent_id, shell_address=shell_address, socket=paths.agent_log_socket,
                   ca_file=tls / CA_CERT, cert_file=tls / CLIENT_CERT, key_file=tls / CLIENT_KEY,
                   spool_dir=rsyslog_spool_dir(paths), shell_port=shell_port)


_AGENT_DROPIN = """\
# @dropin@: forward convocate's session logs to the shell host (DESIGN §4, §5).
# Written by `convocate-host init-agent` for agent @agent_id@; a re-run overwrites changes.
#
# Session containers log through Docker's syslog driver (syslog-format=rfc5424) to the socket
# @socket@. Its messages have their own ruleset, so none reaches the host's own rules,
# and go to @shell_address@:@shell_port@ over TLS (gtls, x509/name: the server certificate must be issued
# by the cluster CA for @shell_peer_name@), as RFC 5424 with HOSTNAME @agent_id@, which the shell
# uses to pick the file. While the shell is unreachable they wait in a disk-assisted queue (up to
# @queue_max_disk_bytes@ bytes in @spool_dir@), retried forever; beyond that they are dropped, never
# blocking the containers. imuxsock is already loaded by Debian's /etc/rsyslog.conf: this file only
# adds an input of it; TLS files are set on the action, not in global().

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
    action(type="omfwd" name="convocate_forward" target="@shell_address@" port="@shell_port@"
           protocol="tcp" TCP_Framing="octet-counted" template="convocate_forward"
           StreamDriver="gtls" StreamDriverMode="1"
           StreamDriverAuthMode="x509/name" StreamDriverPermittedPeers="@shell_peer_name@"
           StreamDriver.CheckExtendedKeyPurpose="on" StreamDriver.PermitExpiredCerts="off"
           StreamDriver.CAFile="@ca_file@"
           StreamDriver.CertFile="@cert_file@"
           StreamDriver.KeyFile="@key_file@"
           queue.type="LinkedList" queue.size="@queue_size@"
           queue.filename="convocate-forward" queue.spoolDirectory="@spool_dir@"
           queue.maxDiskSpace="@queue_max_disk_bytes@" queue.saveOnShutdown="on"
           queue.timeoutEnqueue="0"
           action.resumeRetryCount="-1" action.resumeInterval="@resume_interval_s@"
           action.resumeIntervalMax="@resume_interval_max_s@")
    stop
}

input(type="imuxsock" Socket="@socket@" CreatePath="on" ruleset="convocate_sessions"
      UseSpecialParser="off" RateLimit.Interval="0")
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
    return _fill(
        _AGENT_DROPIN,
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
    )


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
