"""The shell host's side of log forwarding: per-agent TLS listener ports and the rsyslog drop-ins that
receive each agent's session logs and audit trail (imtcp, gtls, RFC 5425).

See :mod:`convocate_host.rsyslog` for the design.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from convocate.common import messages
from convocate.common.auditchain import AUDIT_APP_NAME
from convocate.common.errors import ConfigError
from convocate.common.paths import Paths
from convocate_host.pki import agent_peer_name, validate_agent_id
from convocate_host.rsyslog_layout import (
    AUDIT_LOG,
    AUDIT_MSGID,
    CA_CERT,
    FIRST_PORT,
    LOG_DIR_MODE,
    LOG_FILE_MODE,
    LOG_GROUP,
    LOG_OWNER,
    MAX_MESSAGE_SIZE,
    PORT_COUNT,
    REJECT_LOG,
    SERVER_CERT,
    SERVER_KEY,
    SHELL_AGENT_DROPIN,
    SHELL_DROPIN,
    fill,
    rsyslog_dropin_dir,
    safe_host,
    safe_int,
    safe_path,
    safe_word,
    session_log_dir,
)

# --- shell host ------------------------------------------------------------------------------------------

def port_range(first: int = FIRST_PORT, count: int = PORT_COUNT) -> range:
    """The shell host's per-agent TLS log ports: ``first`` .. ``first + count - 1``.

    Raises:
        ConfigError: the range leaves 1..65535.
    """
    safe_int("log port", first, 1, 65535 - count + 1)
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
    if safe_word("file_owner", listener.file_owner):
        owner += f' fileOwner="{listener.file_owner}" dirOwner="{listener.file_owner}"'
    if safe_word("file_group", listener.file_group):
        owner += f' fileGroup="{listener.file_group}" dirGroup="{listener.file_group}"'
    indent = "\n" + " " * 14
    return {
        "log_dir": safe_path("log_dir", listener.log_dir).rstrip("/") or "/",
        "reject": REJECT_LOG,
        "dir_mode": f"{safe_int('dir_mode', listener.dir_mode, 0, 0o7777):04o}",
        "file_mode": f"{safe_int('file_mode', listener.file_mode, 0, 0o7777):04o}",
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
    return fill(_SHELL_DROPIN, dropin=str(dropins / SHELL_DROPIN),
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
    return fill(
        _SHELL_AGENT_DROPIN,
        dropin=str(dropins / shell_agent_dropin(agent_id)),
        shared=str(dropins / SHELL_DROPIN),
        agent_id=agent_id,
        peer=agent_peer_name(agent_id),
        audit_app=AUDIT_APP_NAME,
        audit_file=AUDIT_LOG.format(agent_id=agent_id),
        audit_msgid=AUDIT_MSGID,
        max_frame=str(MAX_MESSAGE_SIZE),
        port=str(safe_int("port", port, 1, 65535)),
        address=f' address="{safe_host("address", listener.address)}"' if listener.address else "",
        ca_file=safe_path("ca_file", listener.ca_file),
        cert_file=safe_path("cert_file", listener.cert_file),
        key_file=safe_path("key_file", listener.key_file),
        **_shell_values(listener),
    )
