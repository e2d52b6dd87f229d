"""Commands and terminals inside a session container: docker exec as the session user.

Docker exec processes (the agent's attach, capture and send) inherit the container's capability
set, ``no-new-privileges``, seccomp and AppArmor profiles: the Engine API's exec (1.41) takes only
``User``, ``Privileged``, ``Env``, ``WorkingDir`` and the TTY fields, so the agent sets ``User`` to
the session user and ``Privileged`` to false (and Docker refuses a privileged exec in such a
container anyway).

:class:`ContainerExec` is a mixin of :class:`convocate_agent.runtime.DockerRuntime` (as docker-py's
``APIClient`` is made of ``ExecApiMixin`` and its siblings): it uses the runtime's ``api`` and
``_call``, and callers keep calling ``runtime.exec(...)``, ``runtime.open_attach(...)``.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from convocate.common.constants import CLAUDE_GID, CLAUDE_UID
from convocate.common.errors import DockerError
from convocate_agent.containerspec import CONTAINER_HOME, container_name
from convocate_agent.dockererrors import docker_errors
from convocate_agent.execpipe import ExecPipe, ExecStream

if TYPE_CHECKING:
    import docker

T = TypeVar("T")

#: tmux session that the image's entrypoint creates (packaging/image/).
TMUX_SESSION = "main"
#: argv[0] given to attach execs, so a restarted agent can find the ones its predecessor left.
ATTACH_MARKER = "convocate-attach"

_TERM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")


class ContainerExec:
    """Runs commands and opens terminals in session containers (a mixin of ``DockerRuntime``)."""

    if TYPE_CHECKING:
        @property
        def api(self) -> docker.APIClient: ...

        async def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...

    async def exec(self, session_id: str, cmd: list[str], *, uid: int = CLAUDE_UID, gid: int = CLAUDE_GID) -> tuple[int, bytes]:
        """Run a command in the session's container as the session user.

        Returns:
            ``(exit code, combined stdout and stderr)``; exit code -1 when the
            container is not running.
        """
        doing = f"exec in session {session_id}"

        def run() -> tuple[int, bytes]:
            try:
                with docker_errors(doing):
                    created = self.api.exec_create(container_name(session_id), cmd, user=f"{uid}:{gid}",
                                                   privileged=False, environment={"HOME": CONTAINER_HOME})
            except DockerError as e:
                if e.status in (404, 409):  # no such container / not running
                    return -1, str(e).encode()
                raise
            output = self.api.exec_start(created["Id"])
            code = self.api.exec_inspect(created["Id"]).get("ExitCode")
            return (code if isinstance(code, int) else -1), output or b""

        return await self._call(doing, run)

    async def tmux(self, session_id: str, *args: str) -> bytes:
        """Run ``tmux ARGS`` in the session's container.

        Raises:
            DockerError: tmux failed; the message carries its output.
        """
        code, out = await self.exec(session_id, ["tmux", *args])
        if code != 0:
            raise DockerError(f"tmux {args[0]} in session {session_id} failed ({code}): "
                              f"{out.decode('utf-8', 'replace').strip()}")
        return out

    async def detach_all(self, session_id: str) -> int:
        """Detach every operator's tmux client of the session; returns how many there were.

        Control-mode clients (``#{client_control_mode}`` 1: the agent's recorder, issue 19) are
        not operators and stay attached.
        """
        out = await self.tmux(session_id, "list-clients", "-t", TMUX_SESSION, "-F",
                              "#{client_control_mode} #{client_name}")
        names = [parts[1] for parts in (line.split(" ", 1) for line in out.decode("utf-8", "replace").splitlines())
                 if len(parts) == 2 and parts[0] == "0"]
        for name in names:
            await self.exec(session_id, ["tmux", "detach-client", "-t", name])
        return len(names)

    async def open_control(self, session_id: str, uid: int = CLAUDE_UID, gid: int = CLAUDE_GID) -> ExecStream:
        """Start the recorder's read-only tmux control-mode client (``tmux -C attach -r``), no TTY.

        Its stdout comes in Docker's multiplexed framing (8-byte headers); closing the stream is
        EOF on its stdin, which ends the client. It sets no size, so tmux ignores it when sizing
        the window (tmux(1) CONTROL MODE, ``refresh-client -C``).

        Raises:
            DockerError: the exec could not be created or started.
        """
        def start() -> tuple[str, Any]:
            created = self.api.exec_create(container_name(session_id), ["tmux", "-C", "attach-session", "-r", "-t",
                                                                        TMUX_SESSION],
                                           stdin=True, tty=False, user=f"{uid}:{gid}", privileged=False,
                                           environment={"HOME": CONTAINER_HOME, "LANG": "C.UTF-8"})
            wrapper = self.api.exec_start(created["Id"], socket=True, tty=False)
            return created["Id"], wrapper

        exec_id, wrapper = await self._call(f"record session {session_id}", start)
        raw: socket.socket = getattr(wrapper, "_sock", wrapper)
        reader, writer = await asyncio.open_connection(sock=raw, limit=1 << 20)
        return ExecStream(exec_id, reader, writer, wrapper)

    async def open_attach(self, session_id: str, *, cols: int, rows: int, term: str, read_only: bool,
                          uid: int = CLAUDE_UID, gid: int = CLAUDE_GID) -> ExecStream:
        """Start ``tmux attach-session`` in the container on a TTY and return its stream.

        The command sets the pty size with ``stty`` before tmux starts, so tmux
        draws once at the right size (MACHINE-NOTES: attach).

        Args:
            session_id: The session UUID.
            cols: Terminal width in columns.
            rows: Terminal height in rows.
            term: ``TERM`` for the tmux client.
            read_only: Attach with ``tmux attach -r`` (an observer).

        Returns:
            The exec with its socket as an :class:`ExecPipe` (``pipe``; no stream pair).

        Raises:
            DockerError: the exec could not be created or started.
        """
        if not _TERM.fullmatch(term):
            term = "xterm-256color"
        attach = "tmux attach-session " + ("-r " if read_only else "") + f"-t {TMUX_SESSION}"
        script = f"stty rows {int(rows)} cols {int(cols)} 2>/dev/null; exec {attach}"

        def start() -> tuple[str, Any]:
            created = self.api.exec_create(container_name(session_id), ["sh", "-c", script, ATTACH_MARKER],
                                           stdin=True, tty=True, user=f"{uid}:{gid}", privileged=False,
                                           environment={"TERM": term, "HOME": CONTAINER_HOME, "LANG": "C.UTF-8"})
            wrapper = self.api.exec_start(created["Id"], socket=True, tty=True)
            return created["Id"], wrapper

        exec_id, wrapper = await self._call(f"attach to session {session_id}", start)
        raw: socket.socket = getattr(wrapper, "_sock", wrapper)
        _, pipe = await asyncio.get_running_loop().create_connection(ExecPipe, sock=raw)
        return ExecStream(exec_id, None, None, wrapper, pipe=pipe)

    async def resize_exec(self, exec_id: str, cols: int, rows: int) -> None:
        """Resize an exec's TTY (Docker ``POST /exec/{id}/resize``)."""
        if cols > 0 and rows > 0:
            await self._call("resize attach", self.api.exec_resize, exec_id, height=rows, width=cols)

    async def detach_exec_clients(self, session_id: str, exec_ids: Iterable[str]) -> int:
        """Detach the tmux clients some execs of one session started, when their streams were closed under them.

        Docker cannot kill an exec; closing its socket leaves tmux's client
        attached forever. Each exec's host PID (``exec_inspect``) is mapped to its
        PID inside the container (``NSpid`` in ``/proc/<pid>/status``) and
        matched against one ``tmux list-clients`` for them all (each ``docker exec``
        in a small container takes a while: ~0.5 s at 0.05 CPUs).

        Returns:
            How many clients were detached.
        """
        inner: set[str] = set()
        for exec_id in exec_ids:
            try:
                info = await self._call("inspect attach", self.api.exec_inspect, exec_id)
            except DockerError:
                continue
            pid = _namespaced_pid(int(info["Pid"])) if info.get("Running") and info.get("Pid") else None
            if pid is not None:
                inner.add(str(pid))
        if not inner:
            return 0
        code, out = await self.exec(session_id, ["tmux", "list-clients", "-F", "#{client_pid} #{client_tty}"])
        if code != 0:
            return 0
        detached = 0
        for line in out.decode("utf-8", "replace").splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] in inner:
                code, _ = await self.exec(session_id, ["tmux", "detach-client", "-t", parts[1]])
                detached += code == 0
        return detached

    async def stale_attach_execs(self, session_id: str) -> list[str]:
        """IDs of running attach execs in a container (from a previous agent process)."""
        try:
            info = await self._call("inspect container", self.api.inspect_container, container_name(session_id))
        except DockerError:
            return []
        found = []
        for exec_id in info.get("ExecIDs") or []:
            try:
                ex = await self._call("inspect exec", self.api.exec_inspect, exec_id)
            except DockerError:
                continue
            if ex.get("Running") and ATTACH_MARKER in (ex.get("ProcessConfig") or {}).get("arguments", []):
                found.append(exec_id)
        return found


def _namespaced_pid(host_pid: int) -> int | None:
    """The innermost PID of ``host_pid`` (last ``NSpid`` field), or None if unknown."""
    try:
        with open(f"/proc/{host_pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
    except (OSError, ValueError):
        return None
    return None
