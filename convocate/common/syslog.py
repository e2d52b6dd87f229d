"""Names of the session log path that the agent and the deploy tool must agree on (DESIGN §5, §6).

Session containers log through Docker's ``syslog`` logging driver to the agent host's rsyslog
socket (:attr:`Paths.agent_log_socket`), which forwards to the shell host over TLS. The agent
starts containers with these options (``convocate_agent.runtime``); ``convocate-host`` writes the
rsyslog configuration that reads them (``convocate_host.rsyslog``).
"""

from __future__ import annotations

from convocate.common.model import validate_uuid

#: The syslog APP-NAME (Docker ``tag``) of a session's log lines is this plus its UUID: 46 characters,
#: within RFC 5424's 48 for APP-NAME.
SESSION_TAG_PREFIX = "convocate-"


def session_log_tag(session_id: str) -> str:
    """``convocate-<uuid>``: the tag of a session's log lines; the shell's log lines start with it.

    Raises:
        BadRequest: ``session_id`` is not a UUIDv4.
    """
    return SESSION_TAG_PREFIX + validate_uuid(session_id)


def docker_log_options(session_id: str, socket: str) -> dict[str, str]:
    """Options of Docker's syslog logging driver for a session (Docker API ``HostConfig.LogConfig.Config``).

    dockerd connects to the socket when the container starts, so a container cannot start while it
    is missing; Docker >= 20.10 keeps ``docker logs`` working through its local cache ("dual logging").
    ``mode=non-blocking`` keeps a session's output from ever waiting on rsyslog (a full buffer drops
    lines instead).

    Args:
        session_id: The session's UUID.
        socket: The rsyslog socket's path as dockerd sees it.

    Returns:
        ``syslog-address``, ``syslog-format``, ``tag`` and ``mode``.

    Raises:
        BadRequest: ``session_id`` is not a UUIDv4.
    """
    return {
        "syslog-address": f"unixgram://{socket}",
        "syslog-format": "rfc5424",
        "tag": session_log_tag(session_id),
        "mode": "non-blocking",
    }
