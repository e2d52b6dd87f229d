"""``convocate-host migrate-session``: move an orphan session directory from the shell host to an agent.

An orphan (state ``O``, DESIGN §4) is a session directory ``/home/claude/<uuid>/`` on the shell
host that no agent claims, e.g. left by a single-host convocate. Migration:

1. refuses when the shell host runs a container for the session, when the directory's
   ``session.json`` is not valid session metadata (the model's validators), or when the agent
   already has a session (a record or a home) of that UUID;
2. copies the directory with tar (owners, modes, symlinks kept) into a staging directory on the
   agent, then compares a manifest of both sides (type, mode, owner, size and SHA-256 of every
   entry): only an identical copy is renamed into ``/home/claude/<uuid>/``, without its
   ``session.json``;
3. writes the validated metadata as the agent's record of the session,
   ``/var/lib/convocate-agent/sessions/<uuid>.json`` (issue 14: the agent never reads metadata
   from a home, which the session can write), after which the agent lists the session like any other;
4. moves the shell's copy aside to ``/home/claude/.migrated/<uuid>/`` (a backup, never deleted
   here).

A second run finds the session on the agent and nothing on the shell host, and says so.
"""

from __future__ import annotations

import json

from convocate.common.constants import CONTAINER_PREFIX
from convocate.common.errors import BadRequest
from convocate.common.model import SessionMeta, validate_uuid
from convocate.common.paths import CLAUDE_USER, LEGACY_SESSION_FILE, Paths
from convocate_host.report import LiveReport
from convocate_host.target import HostError, Target, relay

PATHS = Paths()
#: One line per entry, sorted: type, mode, owner, size, SHA-256 (files) and path; run in the directory.
_MANIFEST = r"""set -eu
cd "$1"
find . -xdev -printf '%y %m %U:%G %s %p\n' | LC_ALL=C sort -k6
find . -xdev -type f -print0 | LC_ALL=C sort -z | xargs -0r sha256sum
"""


async def manifest(target: Target, directory: str) -> str:
    """The manifest of ``directory`` on ``target`` (see ``_MANIFEST``)."""
    return (await target.sh(_MANIFEST, directory, what=f"listing {directory}", reads=True)).text


async def migrate_session(shell: Target, agent: Target, session_id: str, agent_id: str, report: LiveReport,
                          shell_report: LiveReport) -> bool:
    """Move session ``session_id`` from ``shell`` to ``agent``; returns True when it moved now.

    Raises:
        BadRequest: the id is not a UUIDv4.
        HostError: a refusal (running container, not a session, already on the agent) or a failed or
            differing copy; the shell's copy is untouched in every such case.
    """
    sid = validate_uuid(session_id, "--session")
    meta = await _check_orphan(shell, agent, sid, agent_id, report, shell_report)
    if meta is None:
        return False
    await _copy_verified(shell, agent, sid, report)
    await _install(shell, agent, meta, report, shell_report)
    return True


async def _check_orphan(shell: Target, agent: Target, sid: str, agent_id: str, report: LiveReport,
                        shell_report: LiveReport) -> SessionMeta | None:
    """Step 1: the orphan's validated metadata, or None when the session already moved.

    Raises:
        HostError: a refusal (running container, not a session, already on the agent).
    """
    source = str(PATHS.session_dir(sid))
    target_dir = str(PATHS.session_dir(sid))
    record = str(PATHS.session_record(sid))
    legacy = f"{source}/{LEGACY_SESSION_FILE}"
    on_agent = await agent.exists(record)
    on_shell = await shell.exists(legacy)
    if on_agent and not on_shell:
        report.kept(f"session {sid} is on agent {agent_id}; the shell host has no copy left")
        return None
    if on_agent:
        raise HostError(f"{agent.description}: session {sid} already exists there; the shell's copy {source} "
                        "was left alone (compare them by hand)")
    if await agent.exists(target_dir):
        raise HostError(f"{agent.description}: {target_dir} exists without a record in {PATHS.session_records_dir}"
                        " (an interrupted migration?); the shell's copy was left alone: compare them, then remove"
                        f" {target_dir} and run migrate-session again")
    if not on_shell:
        raise HostError(f"{shell.description}: {legacy} does not exist: not an orphan session")
    try:
        meta = SessionMeta.from_json(json.loads(await shell.read_file(legacy) or b""), expected_uuid=sid)
    except (ValueError, BadRequest) as e:
        raise HostError(f"{shell.description}: {legacy} is not valid session metadata ({e}); nothing moved") from e
    running = await shell.run(["docker", "ps", "-q", "--filter", f"name=^/{CONTAINER_PREFIX}{sid}$"], check=False,
                              reads=True)
    if running.ok and running.text.strip():
        raise HostError(f"{shell.description}: a container runs for session {sid} there; stop it first "
                        "(nothing moved)")
    if not running.ok:
        shell_report.note("docker is not usable on the shell host: no local container can run the session")
    else:
        shell_report.kept(f"no container runs session {sid} on the shell host")
    return meta


async def _copy_verified(shell: Target, agent: Target, sid: str, report: LiveReport) -> None:
    """Step 2: copy the session directory into the agent's staging directory and compare manifests.

    Raises:
        HostError: the copy failed or differs; the staging copy is removed.
    """
    source = str(PATHS.session_dir(sid))
    staging = f"{PATHS.staging_dir}/migrate-{sid}"
    await agent.sh('rm -rf -- "$1" && mkdir -p -- "$1"', staging, what="preparing the staging directory")
    sender = await shell.open_process(["tar", "-C", str(PATHS.session_base), "--numeric-owner", "-cf", "-", sid],
                                      reads=True)
    receiver = await agent.open_process(["tar", "-C", staging, "--numeric-owner", "--same-owner", "-xpf", "-"])
    sent, packed, unpacked = await relay(sender, receiver)
    if not packed.ok or not unpacked.ok:
        await agent.run(["rm", "-rf", "--", staging], check=False)
        failed = packed if not packed.ok else unpacked
        raise HostError(f"copying session {sid} failed ({failed.detail()}); the shell's copy is untouched")
    here, there = await manifest(shell, source), await manifest(agent, f"{staging}/{sid}")
    if here != there:
        await agent.run(["rm", "-rf", "--", staging], check=False)
        raise HostError(f"the copy of session {sid} on {agent.description} differs from the shell's; it was "
                        "removed and the shell's copy is untouched")
    report.changed(f"session {sid} copied ({sent >> 10} KiB, {len(here.splitlines()) // 2} entries verified)")


async def _install(shell: Target, agent: Target, meta: SessionMeta, report: LiveReport,
                   shell_report: LiveReport) -> None:
    """Steps 2 (end), 3 and 4: rename the verified copy into place, write the record, move the shell's copy aside."""
    sid = meta.uuid
    source = target_dir = str(PATHS.session_dir(sid))
    staging = f"{PATHS.staging_dir}/migrate-{sid}"
    record = str(PATHS.session_record(sid))
    await agent.sh('rm -f -- "$1/$4" && mv -- "$1" "$2" && rmdir -- "$3"', f"{staging}/{sid}", target_dir, staging,
                   LEGACY_SESSION_FILE, what="moving the session into place")
    report.changed(f"session {sid} in place at {target_dir}")
    owner = f"{CLAUDE_USER}:{CLAUDE_USER}"
    await agent.ensure_dir(str(PATHS.session_records_dir), mode=0o750, owner=owner)
    await agent.write_file(record, (json.dumps(meta.to_json(), indent=2) + "\n").encode(), mode=0o640, owner=owner)
    report.changed(f"session {sid} recorded at {record}")
    backup = f"{PATHS.migrated_dir}/{sid}"
    await shell.sh('mkdir -p -- "$(dirname -- "$2")" && mv -- "$1" "$2"', source, backup,
                   what="moving the shell's copy aside")
    shell_report.changed(f"the shell's copy moved to {backup} (a backup; remove it when you are satisfied)")
