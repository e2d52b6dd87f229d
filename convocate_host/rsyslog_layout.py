"""Log forwarding's fixed names and numbers (ports, drop-in and certificate file names, modes), the
checks every value passes before it is written into RainerScript (rsyslog.conf(5)), and the host layout.

See :mod:`convocate_host.rsyslog` for the design; the rules come from RFC 5425 (syslog over TLS) and
the rsyslog documentation.
"""

from __future__ import annotations

import re
from pathlib import Path

from convocate.common import messages
from convocate.common import syslog as common_syslog
from convocate.common.errors import ConfigError
from convocate.common.paths import Paths
from convocate_host.pki import split_host_names

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


def safe_path(field: str, value: Path | str) -> str:
    """``value`` as an absolute path safe inside a RainerScript string.

    Raises:
        ConfigError: it holds a character outside ``[A-Za-z0-9._/+@:,=-]`` or a ``..`` component.
    """
    text = str(value)
    if not _SAFE_PATH.fullmatch(text) or "/../" in f"{text}/":
        raise ConfigError(messages.BAD_RSYSLOG_VALUE.format(
            field=field, value=text, rule="must be an absolute path of letters, digits and ._/+@:,=-"))
    return text


def safe_word(field: str, value: str | None) -> str | None:
    """``value`` (a user or group name, or None) checked safe inside a RainerScript string.

    Raises:
        ConfigError: it holds a character outside ``[A-Za-z0-9._-]``.
    """
    if value is not None and not _SAFE_WORD.fullmatch(value):
        raise ConfigError(messages.BAD_RSYSLOG_VALUE.format(field=field, value=value,
                                                            rule="must be a user or group name"))
    return value


def safe_int(field: str, value: int, low: int, high: int) -> int:
    """``value`` checked to be an integer (not a bool) in ``low..high``.

    Raises:
        ConfigError: it is not.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(messages.BAD_RSYSLOG_VALUE.format(field=field, value=value,
                                                            rule=f"must be an integer in {low}..{high}"))
    return value


def safe_host(field: str, value: str) -> str:
    """``value`` as one host name or IP address (normalised by :func:`convocate_host.pki.split_host_names`).

    Raises:
        ConfigError: it is neither.
    """
    try:
        dns, ips = split_host_names([value])
    except ConfigError as e:
        raise ConfigError(messages.BAD_RSYSLOG_VALUE.format(field=field, value=value,
                                                            rule="is not a host name or an IP address")) from e
    return (dns or ips)[0]


def fill(template: str, **values: str) -> str:
    """``template`` with every ``@key@`` replaced by its (already checked) value; none may be left over."""
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
