"""``convocate ls`` and ``convocate agents``: from status-serve's copy where it is current, else over SSH.

Each registered agent is answered by status-serve's local socket when
:func:`convocate.localstatus.usable` says its copy is current, and by the agent
itself over SSH otherwise (only those agents: asyncio, asyncssh and the SSH
connection are loaded only when one is left). The rows and the table are the
same either way; ``--json`` adds ``"source"`` to each row: ``"status-serve"`` or
``"agent"``.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from convocate import localstatus
from convocate.common import messages
from convocate.common.errors import ConfigError, ConvocateError
from convocate.common.model import SessionView
from convocate.common.paths import Paths
from convocate.localstatus import SOURCE_AGENT, SOURCE_STATUS, agent_mark
from convocate.orphans import scan_orphans, unclaimed
from convocate.registry import AgentRecord, load_registry
from convocate.render import capacity_cells, format_table, print_json, sessions_table, waiting_table, wire_with_agent

if TYPE_CHECKING:
    import argparse

PROG = "convocate"


def registry(paths: Paths) -> list[AgentRecord]:
    """The registered agents, sorted by ID, with the same errors as :class:`convocate.cluster.Cluster`.

    Raises:
        NoPermission: this account may not read the registry (it is the ``claude`` account's).
        ConfigError: no agent is registered.
    """
    from convocate.common.cli import no_permission

    try:
        records, errors = load_registry(paths)
    except PermissionError as e:  # /etc/convocate is the claude account's (0750)
        raise no_permission(e) from e
    if errors:
        import logging

        for error in errors:
            logging.getLogger("convocate.client").warning("%s", error)
    if not records:
        raise ConfigError(messages.NO_AGENTS.format(path=paths.agents_dir))
    return records


def _split(records: list[AgentRecord], replay: localstatus.Replay | None,
           ) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Agent ID → status-serve's usable copy, and the IDs that must be asked over SSH (registry order)."""
    local: dict[str, dict[str, Any]] = {}
    remote: list[str] = []
    for record in records:
        copy, _reason = localstatus.usable(replay, record.agent_id)
        if copy is None:
            remote.append(record.agent_id)
        else:
            local[record.agent_id] = copy
    return local, remote


def _run_ssh(paths: Paths, agent_ids: list[str], work: Any) -> Any:
    """Run ``work(cluster)`` on a :class:`Cluster` of just ``agent_ids`` (asyncio and asyncssh load here)."""
    import asyncio

    from convocate.cluster import Cluster

    async def run() -> Any:
        cluster = Cluster(paths)
        cluster.clients = {a: cluster.clients[a] for a in agent_ids if a in cluster.clients}
        try:
            return await work(cluster)
        finally:
            await cluster.close()

    return asyncio.run(run())


def ls(args: argparse.Namespace) -> int:
    """``convocate ls [--waiting] [--wide] [--json]``; returns the exit status."""
    paths = Paths.from_env()
    records = registry(paths)
    replay = localstatus.read_replay(paths)
    local, remote = _split(records, replay)
    rows: dict[str, list[tuple[SessionView, str]]] = {
        agent_id: [(SessionView.from_wire(obj, agent_id), SOURCE_STATUS) for obj in copy["sessions"]]
        for agent_id, copy in local.items()}
    errors: dict[str, ConvocateError] = {}
    if remote:
        async def work(cluster: Any) -> Any:
            return await cluster.list()

        listing = _run_ssh(paths, remote, work)
        errors = listing.errors
        for ref in listing.sessions:
            rows.setdefault(ref.client.agent_id, []).append((ref.view, SOURCE_AGENT))
    # Registry order, then newest access first, as Cluster.list sorts (a stable sort).
    sessions = [row for record in records for row in rows.get(record.agent_id, [])]
    sessions.sort(key=lambda r: r[0].meta.last_accessed, reverse=True)
    orphans = [] if errors else unclaimed(scan_orphans(paths), {v.meta.uuid for v, _ in sessions})
    shown = [(v, src) for v, src in sessions if not args.waiting or v.meta.activity == "waiting"]
    if args.waiting:
        orphans = []
    if args.json:
        print_json([{**wire_with_agent(v.to_wire(), v.agent_id), "source": src} for v, src in shown]
                    + [{**v.to_wire(), "agent_id": None} for v in orphans])
    elif args.waiting:
        print(waiting_table([v for v, _ in shown]))
    else:
        print(sessions_table([v for v, _ in shown] + orphans, wide=args.wide))
    for agent_id, error in sorted(errors.items()):
        print(f"{PROG}: agent {agent_id} unavailable: {error}", file=sys.stderr)
    states = replay.status if replay is not None else {}
    for record in records:
        mark = agent_mark(states.get(record.agent_id, {}))
        if mark:
            print(f"{PROG}: agent {record.agent_id}: {mark}", file=sys.stderr)
    from convocate import image_status

    image_problem = image_status.packaged_problem(paths)
    if image_problem:
        print(f"{PROG}: {image_problem}", file=sys.stderr)
    if errors and not sessions and len(errors) == len(records):
        return next(iter(errors.values())).exit_code
    return 0


def agents(args: argparse.Namespace) -> int:
    """``convocate agents [--json]``; returns the exit status."""
    paths = Paths.from_env()
    records = registry(paths)
    replay = localstatus.read_replay(paths)
    local, remote = _split(records, replay)
    rows: dict[str, dict[str, Any]] = {}
    for record in records:
        copy = local.get(record.agent_id)
        if copy is None or not isinstance(copy.get("ping"), dict) or not isinstance(copy.get("capacity"), dict):
            if record.agent_id not in remote:
                remote.append(record.agent_id)
            continue
        rows[record.agent_id] = {"agent_id": record.agent_id, "address": record.endpoint, "status": "ok",
                                 **copy["ping"], "capacity": copy["capacity"], "source": SOURCE_STATUS}
    if remote:
        async def work(cluster: Any) -> list[dict[str, Any]]:
            import asyncio

            from convocate import compat
            from convocate.common.ops.params import PingParams

            async def probe(client: Any) -> dict[str, Any]:
                row: dict[str, Any] = {"agent_id": client.agent_id, "address": client.record.endpoint}
                try:
                    row.update(status="ok", **(await client.request(PingParams())).received)
                    row["capacity"] = await compat.capacity(client, row)  # None + row["note"]: protocol 1
                except ConvocateError as e:
                    row.update(status="unavailable", error=str(e))
                row["source"] = SOURCE_AGENT
                return row

            return list(await asyncio.gather(*(probe(c) for c in cluster.clients.values())))

        for row in _run_ssh(paths, remote, work):
            rows[row["agent_id"]] = row
    ordered = [rows[r.agent_id] for r in records if r.agent_id in rows]
    states = replay.status if replay is not None else {}
    for row in ordered:  # what status-serve knows of the agent's own link to it (tcp/223), if it runs
        row["status_link"] = states.get(row["agent_id"])
    if args.json:
        print_json(ordered)
    else:
        table = [(r["agent_id"], r["address"], "draining" if (r.get("capacity") or {}).get("draining") else r["status"],
                  str(r.get("version", "-")), *capacity_cells(r))
                 for r in ordered]
        print(format_table(table, ("AGENT", "ADDRESS", "STATUS", "VERSION", "SESSIONS", "CPUS", "MEMORY", "LOAD")))
        for r in ordered:
            if r["status"] != "ok":
                print(f"{PROG}: agent {r['agent_id']}: {r['error']}", file=sys.stderr)
            elif r.get("note"):  # compat: a protocol-1 agent's missing capacity
                print(f"{PROG}: agent {r['agent_id']}: {r['note']}", file=sys.stderr)
    return 0 if all(r["status"] == "ok" for r in ordered) else 1
