"""``convocate move SESSION --to AGENT|auto``: move a session between agents (issue 18 item 2).

The files go from the source agent to the target THROUGH this shell host, over the two SSH
peerings it already has (no trust between agents): the source's ``convocate-agent-transfer``
subsystem streams a tar of the home and recordings (``export``), this host pipes it into the
target's (``import``), and the target verifies every file's SHA-256 against the manifest before
it renames the copy into place (convocate_agent/transfer.py).

Steps, and the one runnable copy at each (docs/move.md):

1. ``planned``: journal written (``<shell_state_dir>/moves/<uuid>.json``, atomic). The source's
   copy is the one.
2. ``stopped``: operators detached (``override``), the session stopped (``kill``) if it ran.
3. transfer: export → import. A failure here (a channel closed, an agent killed, a refused or
   damaged stream) leaves nothing on the target (its staging copy is removed, or swept by its
   recovery) and the source copy is restarted if it ran: rollback.
4. ``imported``: the target holds the verified copy; from here the target's copy is the one.
5. ``started``: restarted on the target if it ran (its supervisor's ``claude -c`` resumes).
6. the source's copy goes to the source's trash (``delete``: restorable); journal removed.

An interrupted move (this process killed, an agent down) is finished by ``convocate move
--resume SESSION`` or by the next move of that session: before step 4 it is rolled back, from
step 4 on it is carried forward. Whether step 4 was reached is asked of the target (does it hold
the UUID?), not only of the journal, so a kill between the import and the journal write is safe.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

import asyncssh

from convocate.common import messages
from convocate.common.errors import BadRequest, Conflict, ConvocateError, Locked, NotFound, ProtocolError
from convocate.common.framing import encode_line
from convocate.common.fsutil import atomic_write
from convocate.common.ops.base import OpParams
from convocate.common.ops.params import DeleteParams, GetParams, KillParams, OverrideParams, RestartParams
from convocate.common.progress import Progress
from convocate.common.protocol import TRANSFER_SUBSYSTEM, Response

#: Bytes piped at a time from the source's channel to the target's.
PIPE_CHUNK = 256 * 1024
#: Longest first line of an export (a session.json object and a size).
HEADER_MAX = 256 * 1024

STEPS = ("planned", "stopped", "imported", "started")


@dataclass
class MoveJournal:
    """The shell's record of a move in progress (``moves/<uuid>.json``).

    Attributes:
        uuid: The session.
        name: Its name (for messages).
        source: Source agent ID.
        target: Target agent ID.
        was_running: Whether it ran when the move began (it runs again at the end, wherever it is).
        step: The last step completed (:data:`STEPS`).
        started_at: Unix seconds the move began.
    """

    uuid: str
    name: str
    source: str
    target: str
    was_running: bool
    step: str = "planned"
    started_at: float = 0.0


def journal_path(state_dir: Path, session_id: str) -> Path:
    return state_dir / "moves" / f"{session_id}.json"


def write_journal(state_dir: Path, journal: MoveJournal) -> None:
    path = journal_path(state_dir, journal.uuid)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write(path, json.dumps(asdict(journal), indent=1).encode(), mode=0o600)


def read_journal(state_dir: Path, session_id: str) -> MoveJournal | None:
    try:
        return MoveJournal(**json.loads(journal_path(state_dir, session_id).read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as e:
        raise BadRequest(messages.MOVE_BAD_JOURNAL.format(path=journal_path(state_dir, session_id), error=e)) from None


def pending_journal(state_dir: Path, ref: str) -> MoveJournal | None:
    """The interrupted move of the session ``ref`` names (UUID, unique UUID prefix of 4+, or name).

    Asked before the agents: while a move is pending past its import both agents hold the
    session, so the cluster's own lookup finds two and cannot choose.

    Raises:
        BadRequest: a journal is unreadable, or ``ref`` matches several pending moves.
    """
    moves = state_dir / "moves"
    found = [j for p in sorted(moves.glob("*.json")) if (j := read_journal(state_dir, p.stem)) is not None
             and (ref in (j.uuid, j.name) or (len(ref) >= 4 and j.uuid.startswith(ref.lower())))]
    if len(found) > 1:
        raise BadRequest(messages.MOVE_AMBIGUOUS.format(ref=ref, uuids=", ".join(j.uuid for j in found)))
    return found[0] if found else None


#: Ops a pending move refuses on its session: each could start or remove one of the two copies the
#: move is deciding about (``kill`` and ``override`` stay: they only stop or detach).
GUARDED_OPS = frozenset({"restart", "delete", "background"})


def refuse_while_moving(state_dir: Path, ref: str, op: str) -> None:
    """Refuse ``op`` on the session ``ref`` names while a move of it is pending on this shell host.

    While a move runs, or after it was cut short past its import, both agents may hold the session,
    and starting the source's stopped copy would make two that run.

    Raises:
        Conflict: a move of it is pending and ``op`` is one of :data:`GUARDED_OPS`; the message
            says how to finish it.
    """
    if op not in GUARDED_OPS:
        return
    journal = pending_journal(state_dir, ref)
    if journal is not None:
        raise Conflict(messages.MOVE_PENDING_REFUSES.format(name=journal.name, op=op, source=journal.source,
                                                            target=journal.target, step=journal.step))


def clear_journal(state_dir: Path, session_id: str) -> None:
    journal_path(state_dir, session_id).unlink(missing_ok=True)


def plan_lines(journal: MoveJournal) -> list[str]:
    """The plan ``--dry-run`` prints, one step a line."""
    run = journal.was_running
    return [
        f"move {journal.name} ({journal.uuid}) from {journal.source} to {journal.target}:",
        f"  1. detach its operators{' and stop it' if run else ''} on {journal.source}",
        f"  2. stream its home and recordings {journal.source} -> this host -> {journal.target}, "
        "SHA-256 per file checked by the target",
        f"  3. {'start it on ' + journal.target if run else 'keep it stopped on ' + journal.target}"
        " (same UUID, name, port, DNS name, limits, credential)",
        f"  4. move the copy on {journal.source} to its trash (restorable)",
    ]


async def _open(client: Any, header: dict[str, Any]) -> Any:
    conn = await client.connect()
    process = await conn.create_process(subsystem=TRANSFER_SUBSYSTEM, encoding=None)
    process.stdin.write(encode_line(header))
    return process


async def _read_line(reader: Any) -> tuple[bytes, bytes]:
    data = b""
    while b"\n" not in data:
        chunk = await reader.read(PIPE_CHUNK)
        if not chunk:
            break
        data += chunk
        if len(data) > HEADER_MAX and b"\n" not in data:
            raise ProtocolError(messages.MOVE_BAD_ANSWER.format(detail="first line too long"))
    line, _, rest = data.partition(b"\n")
    if not line:
        raise ProtocolError(messages.MOVE_BAD_ANSWER.format(detail="the channel closed without an answer"))
    return line, rest


async def transfer(source: Any, target: Any, session_id: str, progress_out: TextIO | None) -> dict[str, Any]:
    """Pipe a stopped session's export on ``source`` into an import on ``target``.

    Returns:
        The target's summary ``{"uuid", "files", "bytes", "skipped"}``.

    Raises:
        ConvocateError: either agent refused or failed (the target kept nothing).
        ProtocolError: a channel closed or answered nonsense.
    """
    export = await _open(source, {"op": "export", "id": session_id})
    imp = None
    try:
        export.stdin.write_eof()
        line, rest = await _read_line(export.stdout)
        head = Response.parse(line).raise_for_error()
        imp = await _open(target, {"op": "import", "meta": head["meta"]})
        total = int(head.get("bytes", 0)) or None
        try:
            with Progress(f"moving {session_id[:8]}", total, out=progress_out or sys.stderr) as bar:
                chunk = rest or await export.stdout.read(PIPE_CHUNK)
                while chunk:
                    imp.stdin.write(chunk)
                    await imp.stdin.drain()
                    bar.advance(len(chunk))
                    chunk = await export.stdout.read(PIPE_CHUNK)
            imp.stdin.write_eof()
        except (OSError, asyncssh.Error):
            # The target closed its side: it refused (its answer says why) or it died (no answer).
            pass
        line, _ = await _read_line(imp.stdout)
        result = Response.parse(line).raise_for_error()
        if (await export.wait()).exit_status not in (0, None):  # cannot happen after a verified import
            raise ProtocolError(messages.MOVE_BAD_ANSWER.format(detail=f"export on {source.agent_id} failed"))
        return result
    finally:
        export.close()
        if imp is not None:
            imp.close()


async def _holds(client: Any, session_id: str) -> bool | None:
    """Whether ``client``'s agent holds the session (None when it cannot be asked)."""
    try:
        await client.request(GetParams(id=session_id))
        return True
    except NotFound:
        return False
    except ConvocateError:
        return None


async def _running(client: Any, session_id: str) -> bool:
    return (await client.request(GetParams(id=session_id))).running


async def _call(client: Any, params_class: type[OpParams[Any]], session_id: str, attempts: int = 40) -> Any:
    """The op of ``params_class`` on the session, retried while the lock is held (an export the move
    just closed releases it when the agent's handler ends: a fraction of a second later)."""
    import asyncio

    for attempt in range(attempts):
        try:
            return await client.request(params_class(id=session_id))  # type: ignore[call-arg]
        except Locked:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.25)
    return None


async def finish(cluster: Any, journal: MoveJournal, state_dir: Path, say: Any) -> str:
    """Carry an interrupted move forward or roll it back; return where the session is now.

    Raises:
        ConvocateError: an agent needed for the next step cannot be reached (the journal stays).
    """
    source, target = cluster.client(journal.source), cluster.client(journal.target)
    on_target = await _holds(target, journal.uuid)
    if on_target is None:
        raise ConvocateError(messages.MOVE_AGENT_UNREACHABLE.format(agent=journal.target))
    if not on_target:  # never reached the target: the source copy is the one
        await source.request(OverrideParams(id=journal.uuid, moving_to=""))  # it may start again
        if journal.was_running and not await _running(source, journal.uuid):
            await _call(source, RestartParams, journal.uuid)
        clear_journal(state_dir, journal.uuid)
        say(f"move of {journal.name} rolled back: it stays on {journal.source}")
        return journal.source
    if journal.step in ("planned", "stopped"):
        journal.step = "imported"
        write_journal(state_dir, journal)
    if journal.was_running and not await _running(target, journal.uuid):
        await _call(target, RestartParams, journal.uuid)
    journal.step = "started"
    write_journal(state_dir, journal)
    on_source = await _holds(source, journal.uuid)
    if on_source is None:  # its copy may still be there: the journal stays until it can be trashed
        raise ConvocateError(messages.MOVE_AGENT_UNREACHABLE.format(agent=journal.source))
    if on_source:
        await _call(source, DeleteParams, journal.uuid)
    clear_journal(state_dir, journal.uuid)
    return journal.target


async def move(cluster: Any, ref: str, to: str, *, state_dir: Path, dry_run: bool = False,
               out: TextIO | None = None, progress_out: TextIO | None = None) -> dict[str, Any]:
    """Move session ``ref`` to agent ``to`` (an agent ID or ``auto``).

    Returns:
        ``{"uuid", "name", "from", "to", "running", "files", "bytes"}`` (``dry_run``: the plan only).

    Raises:
        NotFound: no such session or agent.
        BadRequest: the session is on ``to`` already, or no agent admits it (``auto``).
        ConvocateError: a step failed; the session is left with one runnable copy (see the module).
    """
    out = out or sys.stdout

    def say(text: str) -> None:
        print(text, file=progress_out or sys.stderr)

    pending = pending_journal(state_dir, ref)
    if pending is not None and not dry_run:
        where = await finish(cluster, pending, state_dir, say)
        if where == to:
            return {"uuid": pending.uuid, "name": pending.name, "from": pending.source, "to": where,
                    "running": pending.was_running, "resumed": True}
        ref = pending.uuid
    found = await cluster.resolve(ref)
    meta, source = found.view.meta, found.client
    if to == "auto":
        to = await _auto_target(cluster, source.agent_id, meta)
    target = cluster.client(to)
    if target.agent_id == source.agent_id:
        raise BadRequest(messages.MOVE_SAME_AGENT.format(name=meta.name, agent=to))
    journal = MoveJournal(meta.uuid, meta.name, source.agent_id, target.agent_id,
                          found.view.running, "planned", time.time())
    if dry_run:
        for line in plan_lines(journal):
            print(line, file=out)
        return {"uuid": meta.uuid, "name": meta.name, "from": journal.source, "to": journal.target,
                "running": journal.was_running, "dry_run": True}
    write_journal(state_dir, journal)
    try:
        # detach the operators attached there; their clients attach again where it runs next
        await source.request(OverrideParams(id=meta.uuid, moving_to=target.agent_id))
        if journal.was_running:
            await source.request(KillParams(id=meta.uuid))
        journal.step = "stopped"
        write_journal(state_dir, journal)
        summary = await transfer(source, target, meta.uuid, progress_out)
    except BaseException:
        try:
            await finish(cluster, journal, state_dir, say)
        except ConvocateError as e:
            say(messages.MOVE_LEFT_PENDING.format(name=meta.name, error=e))
        raise
    journal.step = "imported"
    write_journal(state_dir, journal)
    where = await finish(cluster, journal, state_dir, say)
    return {"uuid": meta.uuid, "name": meta.name, "from": journal.source, "to": where,
            "running": journal.was_running, "files": summary.get("files"), "bytes": summary.get("bytes")}


async def _auto_target(cluster: Any, source_id: str, meta: Any) -> str:
    from convocate import placement

    others = [c for aid, c in cluster.clients.items() if aid != source_id]
    loads, extra = await placement.survey(others)
    for choice in placement.rank(loads, meta.cpus, meta.memory_mb, extra):
        if choice.admits:
            return choice.agent_id
    raise BadRequest(messages.MOVE_NO_TARGET.format(name=meta.name))
