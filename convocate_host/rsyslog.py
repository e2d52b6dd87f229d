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

The code lives in :mod:`convocate_host.rsyslog_layout` (names, numbers, value checks, layout),
:mod:`convocate_host.rsyslog_shell` and :mod:`convocate_host.rsyslog_agent`; every public name is
re-exported here (``X as X``) for the callers and tests that use ``rsyslog.X``.
"""

from __future__ import annotations

from convocate_host.rsyslog_agent import AgentForwarder as AgentForwarder
from convocate_host.rsyslog_agent import render_agent_dropin as render_agent_dropin
from convocate_host.rsyslog_agent import render_message_size_dropin as render_message_size_dropin
from convocate_host.rsyslog_agent import rsyslog_account as rsyslog_account
from convocate_host.rsyslog_layout import AGENT_DROPIN as AGENT_DROPIN
from convocate_host.rsyslog_layout import AUDIT_LOG as AUDIT_LOG
from convocate_host.rsyslog_layout import AUDIT_MSGID as AUDIT_MSGID
from convocate_host.rsyslog_layout import AUDIT_SOCKET_NAME as AUDIT_SOCKET_NAME
from convocate_host.rsyslog_layout import CA_CERT as CA_CERT
from convocate_host.rsyslog_layout import CA_KEY as CA_KEY
from convocate_host.rsyslog_layout import CLIENT_CERT as CLIENT_CERT
from convocate_host.rsyslog_layout import CLIENT_KEY as CLIENT_KEY
from convocate_host.rsyslog_layout import FILE_MODES as FILE_MODES
from convocate_host.rsyslog_layout import FIRST_PORT as FIRST_PORT
from convocate_host.rsyslog_layout import LOG_DIR_MODE as LOG_DIR_MODE
from convocate_host.rsyslog_layout import LOG_FILE_MODE as LOG_FILE_MODE
from convocate_host.rsyslog_layout import LOG_GROUP as LOG_GROUP
from convocate_host.rsyslog_layout import LOG_OWNER as LOG_OWNER
from convocate_host.rsyslog_layout import MAX_MESSAGE_SIZE as MAX_MESSAGE_SIZE
from convocate_host.rsyslog_layout import MESSAGE_SIZE_DROPIN as MESSAGE_SIZE_DROPIN
from convocate_host.rsyslog_layout import PORT_COUNT as PORT_COUNT
from convocate_host.rsyslog_layout import REJECT_LOG as REJECT_LOG
from convocate_host.rsyslog_layout import SERVER_CERT as SERVER_CERT
from convocate_host.rsyslog_layout import SERVER_KEY as SERVER_KEY
from convocate_host.rsyslog_layout import SHELL_AGENT_DROPIN as SHELL_AGENT_DROPIN
from convocate_host.rsyslog_layout import SHELL_DROPIN as SHELL_DROPIN
from convocate_host.rsyslog_layout import docker_log_options as docker_log_options
from convocate_host.rsyslog_layout import rsyslog_dropin_dir as rsyslog_dropin_dir
from convocate_host.rsyslog_layout import rsyslog_spool_dir as rsyslog_spool_dir
from convocate_host.rsyslog_layout import session_log_dir as session_log_dir
from convocate_host.rsyslog_shell import ShellListener as ShellListener
from convocate_host.rsyslog_shell import choose_log_port as choose_log_port
from convocate_host.rsyslog_shell import firewall_rule as firewall_rule
from convocate_host.rsyslog_shell import port_range as port_range
from convocate_host.rsyslog_shell import render_shell_agent_dropin as render_shell_agent_dropin
from convocate_host.rsyslog_shell import render_shell_dropin as render_shell_dropin
from convocate_host.rsyslog_shell import shell_agent_dropin as shell_agent_dropin
