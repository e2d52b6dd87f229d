"""The work of the ``convocate`` verbs: what each command does once its command line is parsed.

:mod:`convocate.cli` parses the command line and loads this module only for a verb that needs it
(issue 17: ``help`` and ``version`` import nothing of it, and the read-only verbs answered from
status-serve's socket need neither asyncssh nor asyncio). Every verb is an adapter (``_cmd_*``) that
builds the call and prints the result; :func:`convocate.cli.main` alone catches the project's error.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from convocate import operator
from convocate.cli import PROG
from convocate.client import AgentClient
from convocate.cluster import Cluster, SessionRef, each_agent
from convocate.common import messages
from convocate.common.errors import BadRequest, Conflict, NotFound, Unreachable
from convocate.common.model import SessionView
from convocate.common.ops import params as rpc
from convocate.common.ops import results
from convocate.common.paths import Paths
from convocate.events import subscribe
from convocate.render import (
    format_table,
    print_json,
    session_summary,
    wire_with_agent,
)

Command = Callable[[argparse.Namespace, Cluster], Awaitable[int]]


def _report(args: argparse.Namespace, verb: str, view: SessionView, client: AgentClient) -> None:
    """Print a lifecycle result: the session as the agent sent it with --json, else one line."""
    if args.json:
        print_json(wire_with_agent(view.received, client.agent_id))
    else:
        print(f"{verb} {session_summary(view)}")


# --- the cluster's verbs (ls and agents: convocate.readverbs; the host's own: convocate.localverbs) ------
async def _cmd_whoami(args: argparse.Namespace, cluster: Cluster) -> int:
    cluster.set_warn(lambda _text: None)  # the reason is printed below, once
    rows = await asyncio.gather(*(operator.whoami(c) for c in cluster.clients.values()))
    if args.json:
        print_json(rows)
    for r in rows:
        if r["error"]:
            print(f"{PROG}: agent {r['agent_id']} unavailable: {r['error']}", file=sys.stderr)
        elif not args.json:
            print(messages.WHOAMI_LINE.format(agent=r["agent_id"], name=r["name"], fingerprint=r["fingerprint"])
                  if r["name"] else messages.WHOAMI_UNIDENTIFIED.format(agent=r["agent_id"], reason=r["reason"]))
    return 0 if not any(r["error"] for r in rows) else 1


async def _cmd_trash(args: argparse.Namespace, cluster: Cluster) -> int:
    answers, errors = await each_agent(cluster.clients.values(), lambda c: c.request(rpc.TrashParams()))
    for agent_id, error in errors.items():
        print(f"{PROG}: agent {agent_id} unavailable: {error}", file=sys.stderr)
    entries = [{**e.received, "agent_id": client.agent_id} for client, result in answers for e in result]
    if args.json:
        print_json(entries)
    else:
        print(format_table([(e["trash_id"], e.get("name", "?"), e["agent_id"], e["deleted_at"][:19].replace("T", " "),
                             e["purge_after"][:19].replace("T", " ")) for e in entries],
                           ("TRASH-ID", "NAME", "AGENT", "DELETED (UTC)", "PURGED AFTER (UTC)")))
    return 0


async def _cmd_restore(args: argparse.Namespace, cluster: Cluster) -> int:
    answers, _ = await each_agent(cluster.clients.values(), lambda c: c.request(rpc.TrashParams()))
    owners = [c for c, entries in answers if any(e.trash_id == args.trash_id for e in entries)]
    if not owners:
        raise NotFound(f'no agent has "{args.trash_id}" in its trash (see `{PROG} trash`)')
    client = owners[0]
    result = await client.request(rpc.RestoreParams(trash_id=args.trash_id))
    if args.json:
        print_json(result.received)
    else:
        print(f"restored {session_summary(result.session)}"
              + (f"; cleared {', '.join(result.cleared)} (taken by another session)" if result.cleared else ""))
    return 0


# --- create and attach ------------------------------------------------------------------
def _lifecycle_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The session fields ``new`` and ``edit`` share, by params field name, for the options given."""
    fields: dict[str, Any] = {}
    for attr, key in (("port", "port"), ("protocol", "protocol"), ("dns", "dns_name"), ("cpus", "cpus"),
                      ("memory", "memory_mb"), ("credential", "credential")):
        value = getattr(args, attr, None)
        if value is not None:
            fields[key] = value
    return fields


async def _cmd_new(args: argparse.Namespace, cluster: Cluster) -> int:
    fields = _lifecycle_fields(args)
    if not fields.get("credential"):
        fields.pop("credential", None)  # the default: an older agent without credentials still answers
    params = rpc.CreateParams(name=args.name, **fields, start=not args.no_start)
    if args.agent or len(cluster.clients) == 1:
        client = cluster.client(args.agent) if args.agent else next(iter(cluster.clients.values()))
        view = await client.request(params)
    else:  # placement (issue 18): the agent with the most headroom, the next one if it refuses late
        from convocate.fleet import create_placed

        client, view = await create_placed(cluster.clients, params, on_skip=lambda agent, e: print(
            f"{PROG}: {messages.PLACEMENT_SKIPPED.format(agent=agent, reason=e)}", file=sys.stderr))
    _report(args, "created", view, client)
    if args.attach:
        return await _attach(cluster, SessionRef(client, view), read_only=False, start=True)
    return 0


async def _attach(cluster: Cluster, ref: SessionRef, *, read_only: bool, start: bool) -> int:
    from convocate.terminal import attach_terminal, follow_moves

    view = ref.view
    if not view.running:
        if not start:
            raise BadRequest(f'session "{view.meta.name}" is not running; start it with `{PROG} restart`')
        from convocate.move import refuse_while_moving

        refuse_while_moving(cluster.paths.shell_state_dir, view.meta.uuid, "restart")
        print(f"starting {view.meta.name} ({view.meta.uuid[:8]}) on {ref.client.agent_id} ...", file=sys.stderr)
        await ref.client.request(rpc.RestartParams(id=view.meta.uuid))
    client = await attach_terminal(ref.client, view.meta.uuid, view.meta.name, read_only=read_only,
                                   relocate=follow_moves(cluster, view.meta.uuid))
    after = await client.request(rpc.GetParams(id=view.meta.uuid))
    if after.running:
        print(f"[convocate] detached from {view.meta.name}; it keeps running", file=sys.stderr)
    else:
        print(f"[convocate] session {view.meta.name} has ended (its agent command exited); "
              f"`{PROG} restart {view.meta.name}` starts it again", file=sys.stderr)
    return 0


async def _cmd_attach(args: argparse.Namespace, cluster: Cluster) -> int:
    ref = await cluster.resolve(args.ref)
    return await _attach(cluster, ref, read_only=args.read_only, start=not args.no_start)


# --- simple lifecycle verbs --------------------------------------------------------------
def _simple(name: str, verb: str) -> Command:
    async def run(args: argparse.Namespace, cluster: Cluster) -> int:
        from convocate.move import refuse_while_moving

        refuse_while_moving(cluster.paths.shell_state_dir, args.ref, name)
        ref = await cluster.resolve(args.ref)
        result = await ref.client.request(rpc.PARAMS[name](id=ref.view.meta.uuid))  # type: ignore[call-arg]
        if isinstance(result, results.Deleted):
            if args.json:
                print_json(result.received)
            else:
                print(f"deleted {ref.view.meta.name} ({ref.view.meta.uuid[:8]}) on {ref.client.agent_id}; "
                      f"its home is in the agent's trash as {result.trash or '?'}")
        elif isinstance(result, results.Overridden):
            if args.json:
                print_json(result.received)
            else:
                print(f"override {session_summary(result.session)}: detached {result.detached} client(s)"
                      + (f", cleared a stale lock of {result.cleared_lock}" if result.cleared_lock else ""))
        else:
            _report(args, verb, result, ref.client)
        return 0

    return run


async def _cmd_clone(args: argparse.Namespace, cluster: Cluster) -> int:
    ref = await cluster.resolve(args.ref)
    result = await ref.client.request(rpc.CloneParams(source_id=ref.view.meta.uuid, name=args.name))
    _report(args, "cloned into", result, ref.client)
    return 0


async def _cmd_edit(args: argparse.Namespace, cluster: Cluster) -> int:
    ref = await cluster.resolve(args.ref)
    fields = _lifecycle_fields(args)
    if args.name is not None:
        fields["name"] = args.name
    if not fields:
        raise BadRequest("nothing to change: give --name, --port, --protocol, --dns, --cpus, --memory or --credential")
    result = await ref.client.request(rpc.EditParams(id=ref.view.meta.uuid, **fields))
    _report(args, "edited", result, ref.client)
    if ref.view.running and any(k in fields for k in ("port", "protocol", "cpus", "memory_mb", "credential")):
        print(f"{PROG}: port, limits and credential take effect at the next `{PROG} restart`", file=sys.stderr)
    return 0


async def _cmd_send(args: argparse.Namespace, cluster: Cluster) -> int:
    ref = await cluster.resolve(args.ref)
    result = await ref.client.request(rpc.SendParams(id=ref.view.meta.uuid, text=" ".join(args.text),
                                                    enter=not args.no_enter))
    if args.json:
        print_json(result.received)
    return 0


async def _cmd_capture(args: argparse.Namespace, cluster: Cluster) -> int:
    ref = await cluster.resolve(args.ref)
    result = await ref.client.request(rpc.CaptureParams(id=ref.view.meta.uuid, lines=args.lines))
    if args.json:
        print_json(result.received)
    else:
        sys.stdout.write(result.text.rstrip("\n") + "\n")  # the pane's unused rows are blank lines
    return 0


async def _cmd_logs(args: argparse.Namespace, cluster: Cluster) -> int:
    ref = await cluster.resolve(args.ref)
    params = rpc.LogsParams(id=ref.view.meta.uuid, lines=args.lines)
    while True:
        result = await ref.client.request(params)
        for line in result.lines:
            print(line, flush=True)
        if not args.follow:
            return 0
        params = rpc.LogsParams(id=ref.view.meta.uuid, since=result.last or None)
        await asyncio.sleep(1.0)


async def _cmd_wait(args: argparse.Namespace, cluster: Cluster) -> int:
    """Return when the session's activity is ``--for``; exit 124 (as timeout(1)) when the time is up."""
    ref = await cluster.resolve(args.ref)
    sid, client = ref.view.meta.uuid, ref.client
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.timeout if args.timeout else None

    async def current() -> str:
        return (await client.request(rpc.GetParams(id=sid))).meta.activity

    async def watch() -> None:
        if await current() == args.state:
            return
        try:  # live from status-serve when it runs; a get every few seconds covers missed events
            async for message in subscribe(cluster.paths):
                if message.get("type") == "replay.done" and await current() == args.state:
                    return
                if message.get("session_id") == sid and (message.get("data") or {}).get("activity") == args.state:
                    return
        except Unreachable:
            pass
        while await current() != args.state:
            await asyncio.sleep(2.0)

    try:
        await asyncio.wait_for(watch(), None if deadline is None else max(0.0, deadline - loop.time()))
    except TimeoutError:
        print(f"{PROG}: {ref.view.meta.name} is still {await current() or 'without activity'} after "
              f"{args.timeout:g} s (waited for {args.state})", file=sys.stderr)
        return 124
    print(f"{ref.view.meta.name} is {args.state}")
    return 0


# --- reply (issue 15) -------------------------------------------------------------------
def reply_text(words: list[str], stdin: Any) -> str:
    """The reply: the words joined by spaces, or all of stdin for ``-``; line breaks become spaces.

    A reply is one line typed at Claude's prompt and then Enter (as ``send`` does): a newline in the
    middle would submit half of it.

    Raises:
        BadRequest: the text is empty.
    """
    raw = stdin.read() if words == ["-"] else " ".join(words)
    text = " ".join(raw.split())
    if not text:
        raise BadRequest(messages.REPLY_EMPTY)
    return text


async def _cmd_reply(args: argparse.Namespace, cluster: Cluster) -> int:
    """Type an answer into a waiting session; refuse one that is not waiting unless --force."""
    text = reply_text(args.text, sys.stdin)
    ref = await cluster.resolve(args.ref)
    sid, client, name = ref.view.meta.uuid, ref.client, ref.view.meta.name
    activity = ref.view.meta.activity
    if activity != "waiting" and not args.force:
        raise Conflict(messages.REPLY_NOT_WAITING.format(name=name, activity=activity or "without activity"))
    result = await client.request(rpc.SendParams(id=sid, text=text, enter=True))
    if not args.wait:
        if args.json:
            print_json(result.received)
        else:
            print(messages.REPLY_SENT.format(name=name))
        return 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.timeout
    while True:
        now = (await client.request(rpc.GetParams(id=sid))).meta.activity
        if now != "waiting":
            if args.json:
                print_json({**result.received, "activity": now})
            else:
                print(messages.REPLY_TAKEN.format(name=name, activity=now or "without activity"))
            return 0
        if loop.time() >= deadline:
            print(f"{PROG}: {messages.REPLY_STILL_WAITING.format(name=name, timeout=args.timeout)}", file=sys.stderr)
            return 124
        await asyncio.sleep(min(0.5, max(0.0, deadline - loop.time())))
async def _run(args: argparse.Namespace) -> int:
    cluster = Cluster(Paths.from_env())
    try:
        return await args.func(args, cluster)
    finally:
        await cluster.close()


async def _cmd_move(args: argparse.Namespace, cluster: Cluster) -> int:
    from convocate import move  # lazily: only this verb needs it

    state_dir = cluster.paths.shell_state_dir
    if args.resume:
        journal = move.pending_journal(state_dir, args.ref)
        if journal is None:
            found = await cluster.resolve(args.ref)  # NotFound when there is no such session either
            # A move whose journal is gone (another shell host, a reinstall) may have left its agent's
            # mark, which refuses restart: with no move to finish here, the copy is the one.
            await found.client.request(rpc.OverrideParams(id=found.view.meta.uuid, moving_to=""))
            print(f"no interrupted move of {found.view.meta.name} on this shell host; it may start again on "
                  f"{found.client.agent_id}", file=sys.stderr)
            return 0
        where = await move.finish(cluster, journal, state_dir, lambda s: print(s, file=sys.stderr))
        print(f"{journal.name} is on {where}")
        return 0
    if not args.to:
        raise BadRequest("move needs --to AGENT (or --to auto)")
    result = await move.move(cluster, args.ref, args.to, state_dir=state_dir, dry_run=args.dry_run)
    if args.json:
        print_json(result)
    elif not args.dry_run:
        print(f"{result['name']} ({result['uuid'][:8]}) is now on {result['to']}"
              f"{' and running' if result['running'] else ' (stopped)'}; attach with `{PROG} attach {result['name']}`")
    return 0
