"""Command line of ``convocate``: the non-interactive client of the agents.

Every verb is a parser (``_add_*``) and an adapter (``_cmd_*``) that builds
the call and prints the result; :func:`main` alone catches the project's
error, prints it to stderr and returns its exit code. With no arguments
``convocate`` opens the operator's TUI.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from convocate import fleet_cli, operator, replay
from convocate.client import AgentClient, Cluster, SessionRef
from convocate.common import messages
from convocate.common.cli import ArgumentParser, run_main, usage_line
from convocate.common.credentials import DEFAULT_NAME, validate_name, validate_session_credential
from convocate.common.errors import BadRequest, ConfigError, Conflict, ConvocateError, NotFound, Unreachable
from convocate.common.model import SessionView
from convocate.common.paths import Paths
from convocate.events import agent_mark, agent_states, format_message, subscribe
from convocate.render import (
    capacity_cells,
    format_table,
    session_summary,
    sessions_table,
    waiting_table,
    wire_with_agent,
)

PROG = "convocate"

USAGE = f"""\
usage: {PROG} [<command> [options]]

Drive Claude Code sessions on the cluster's agents. Without a command, opens
the operator's TUI. Sessions are named by UUID, unique UUID prefix, or name.

commands:
  ls [--json] [--waiting]         list sessions on every agent (and flag stale agents)
  agents                          list registered agents and whether they answer
  events [--json]                 stream the cluster's events as they happen
  status-serve [--listen H:P]     run the shell's status listener (convocate-status.service)
  install [options]               set up this shell host (and build the session image); idempotent
  image-status [--json]           is the session image built, being built, or why not
  new NAME [--agent A] [options]  create (and start) a session; without --agent, placement picks the agent
  place [--cpus N] [--memory M]   where a new session would go, and why (changes nothing)
  drain AGENT [--no-move]         the agent takes no new session; its sessions move to the others
  undrain AGENT                   the agent takes new sessions again
  attach REF [--read-only]        attach this terminal; detach with Ctrl-b d
  kill REF                        stop a session's container
  restart REF                     (re)start a session from the current image
  delete REF                      move a stopped session to the agent's trash
  clone REF NAME                  copy a session's home into a new session
  edit REF [options]              change name, port, DNS name, CPUs, memory
  background REF                  detach every operator; the session keeps running
  override REF                    take over a locked or attached session
  send REF TEXT [--no-enter]      type TEXT into a session
  reply REF TEXT|- [--force] [--wait [--timeout S]]
                                  answer a session that waits for the operator (- reads stdin)
  capture REF [--lines N]         print a session's screen
  logs REF [-f] [--lines N]       the session's supervisor and activity logs
  replay REF [--since T] [--until T] [--speed N] [--idle-limit S] [--cat | --json | --export F.cast]
                                  play (or print) a session's terminal recording
  grep PATTERN [--session REF] [--since T] [--until T]
                                  search every session's recordings; prints session, time, line
  wait REF --for STATE [--timeout S]
                                  wait until a session is waiting, idle or exited
  auth set [--name N] (--api-key | --oauth-token) [--from-file F]
                                  store a Claude credential and send it to every agent
  auth push [--name N]            send the stored credentials to every agent again
  auth status [--json]            which agent holds which credential (fingerprints only)
  auth rm NAME                    remove a credential from the shell host and every agent
  trash                           list deleted sessions still in the agents' trash
  restore TRASH-ID                bring a deleted session back from the trash
  whoami [--json]                 who each agent takes you for (your operator certificate), or why nobody
  audit [--session S] [--operator O] [--since T] [--until T] [--agent A] [--verify] [--file PATH]
                                  the agents' audit trails merged by time; --verify checks the hash chains
  version                         print the version
  help                            print this help

Every command accepts --json to print the agent's result as JSON.
Set CONVOCATE_ROOT to relocate /etc/convocate (tests, the demo).
"""

Command = Callable[[argparse.Namespace, Cluster], Awaitable[int]]


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False))


def _view(result: Any, agent_id: str) -> SessionView:
    return SessionView.from_wire(result, agent_id)


def _report(args: argparse.Namespace, verb: str, result: Any, client: AgentClient) -> None:
    """Print a lifecycle result: JSON with --json, else one line."""
    if args.json:
        _print_json(wire_with_agent(result, client.agent_id) if isinstance(result, dict) and "uuid" in result
                    else result)
    else:
        print(f"{verb} {session_summary(_view(result, client.agent_id))}")


# --- ls and agents ----------------------------------------------------------------
async def _cmd_ls(args: argparse.Namespace, cluster: Cluster) -> int:
    listing, states = await asyncio.gather(cluster.list(), agent_states(cluster.paths))
    sessions = [s for s in listing.sessions if not args.waiting or s.view.meta.activity == "waiting"]
    orphans = [] if args.waiting else listing.orphans
    if args.json:
        _print_json([wire_with_agent(s.view.to_wire(), s.client.agent_id) for s in sessions]
                    + [{**v.to_wire(), "agent_id": None} for v in orphans])
    elif args.waiting:
        print(waiting_table([s.view for s in sessions]))
    else:
        print(sessions_table([s.view for s in sessions] + orphans, wide=args.wide))
    for agent_id, error in sorted(listing.errors.items()):
        print(f"{PROG}: agent {agent_id} unavailable: {error}", file=sys.stderr)
    for agent_id in sorted(cluster.clients):
        mark = agent_mark(states.get(agent_id, {}))
        if mark:
            print(f"{PROG}: agent {agent_id}: {mark}", file=sys.stderr)
    from convocate import image_status

    image_problem = image_status.packaged_problem(cluster.paths)
    if image_problem:
        print(f"{PROG}: {image_problem}", file=sys.stderr)
    if listing.errors and not listing.sessions and len(listing.errors) == len(cluster.clients):
        return next(iter(listing.errors.values())).exit_code
    return 0


async def _cmd_image_status(args: argparse.Namespace) -> int:
    from convocate import image_status
    from convocate.shell_install import default_image_tag

    paths = Paths.from_env()
    tag = default_image_tag()
    problem = image_status.problem(paths, tag)
    build = image_status.load(paths.image_build_status)
    if args.json:
        _print_json({"tag": tag, "ready": problem is None, "build": None if build is None else vars(build),
                     "problem": problem})
    elif problem is None:
        print(f"session image {tag}: built {build.finished if build else ''}".rstrip())
    else:
        print(problem)
    return 0 if problem is None else ConfigError.exit_code


async def _cmd_agents(args: argparse.Namespace, cluster: Cluster) -> int:
    from convocate import compat

    async def probe(client: AgentClient) -> dict[str, Any]:
        row: dict[str, Any] = {"agent_id": client.agent_id, "address": client.record.endpoint}
        try:
            row.update(status="ok", **(await client.call("ping")))
            row["capacity"] = await compat.capacity(client, row)  # None + row["note"] for a protocol-1 agent
        except ConvocateError as e:
            row.update(status="unavailable", error=str(e))
        return row

    rows, states = await asyncio.gather(asyncio.gather(*(probe(c) for c in cluster.clients.values())),
                                        agent_states(cluster.paths))
    for row in rows:  # what status-serve knows of the agent's own link to it (tcp/223), if it runs
        row["status_link"] = states.get(row["agent_id"])
    if args.json:
        _print_json(rows)
    else:
        table = [(r["agent_id"], r["address"], "draining" if (r.get("capacity") or {}).get("draining") else r["status"],
                  str(r.get("version", "-")), *capacity_cells(r)) for r in rows]
        print(format_table(table, ("AGENT", "ADDRESS", "STATUS", "VERSION", "SESSIONS", "CPUS", "MEMORY", "LOAD")))
        for r in rows:
            if r["status"] != "ok":
                print(f"{PROG}: agent {r['agent_id']}: {r['error']}", file=sys.stderr)
            elif r.get("note"):  # compat: a protocol-1 agent's missing capacity
                print(f"{PROG}: agent {r['agent_id']}: {r['note']}", file=sys.stderr)
    return 0 if all(r["status"] == "ok" for r in rows) else 1


async def _cmd_whoami(args: argparse.Namespace, cluster: Cluster) -> int:
    cluster.set_warn(lambda _text: None)  # the reason is printed below, once
    rows = await asyncio.gather(*(operator.whoami(c) for c in cluster.clients.values()))
    if args.json:
        _print_json(rows)
    for r in rows:
        if r["error"]:
            print(f"{PROG}: agent {r['agent_id']} unavailable: {r['error']}", file=sys.stderr)
        elif not args.json:
            print(messages.WHOAMI_LINE.format(agent=r["agent_id"], name=r["name"], fingerprint=r["fingerprint"])
                  if r["name"] else messages.WHOAMI_UNIDENTIFIED.format(agent=r["agent_id"], reason=r["reason"]))
    return 0 if not any(r["error"] for r in rows) else 1


async def _cmd_trash(args: argparse.Namespace, cluster: Cluster) -> int:
    results = await asyncio.gather(*(c.call("trash") for c in cluster.clients.values()), return_exceptions=True)
    entries = []
    for client, result in zip(cluster.clients.values(), results, strict=False):
        if isinstance(result, ConvocateError):
            print(f"{PROG}: agent {client.agent_id} unavailable: {result}", file=sys.stderr)
        elif isinstance(result, list):
            entries += [{**e, "agent_id": client.agent_id} for e in result]
    if args.json:
        _print_json(entries)
    else:
        print(format_table([(e["trash_id"], e.get("name", "?"), e["agent_id"], e["deleted_at"][:19].replace("T", " "),
                             e["purge_after"][:19].replace("T", " ")) for e in entries],
                           ("TRASH-ID", "NAME", "AGENT", "DELETED (UTC)", "PURGED AFTER (UTC)")))
    return 0


async def _cmd_restore(args: argparse.Namespace, cluster: Cluster) -> int:
    results = await asyncio.gather(*(c.call("trash") for c in cluster.clients.values()), return_exceptions=True)
    owners = [c for c, r in zip(cluster.clients.values(), results, strict=False)
              if isinstance(r, list) and any(e["trash_id"] == args.trash_id for e in r)]
    if not owners:
        raise NotFound(f'no agent has "{args.trash_id}" in its trash (see `{PROG} trash`)')
    client = owners[0]
    result = await client.call("restore", {"trash_id": args.trash_id})
    if args.json:
        _print_json(result)
    else:
        print(f"restored {session_summary(_view(result['session'], client.agent_id))}"
              + (f"; cleared {', '.join(result['cleared'])} (taken by another session)" if result["cleared"] else ""))
    return 0


async def _cmd_audit(args: argparse.Namespace) -> int:
    from convocate.audit import AuditQuery, run_audit

    query = AuditQuery(session=args.session, operator=args.operator, since=args.since, until=args.until,
                       agent=args.agent)
    if args.file is not None:
        return await run_audit(None, query, verify=args.verify, as_json=args.json, file=args.file)
    cluster = Cluster(Paths.from_env())
    try:
        return await run_audit(cluster, query, verify=args.verify, as_json=args.json, file=None)
    finally:
        await cluster.close()


async def _cmd_events(args: argparse.Namespace) -> int:
    async for message in subscribe(Paths.from_env()):
        if args.json:
            print(json.dumps(message, ensure_ascii=False), flush=True)
        else:
            print(format_message(message), flush=True)
    return 0


async def _cmd_install(args: argparse.Namespace) -> int:
    from convocate.shell_install import ShellInstallOptions, install, render_defaults

    if args.print_defaults:
        sys.stdout.write(render_defaults(args.status_port, args.base_image))
        return 0

    options = ShellInstallOptions(build_image=args.image is not False, require_image=args.image is True,
                                  background_image=args.image_in_background,
                                  base_image=args.base_image or None,
                                  claude_code=args.claude_code, image_tag=args.image_tag,
                                  image_context=args.image_context, domain=args.domain, status_port=args.status_port)
    report = install(Paths.from_env(), options)
    if args.json:
        _print_json({"ok": True, "steps": report.steps, "changes": report.changes, "summary": report.summary()})
        return 0
    for step in report.steps:
        print(step)
    print(f"{PROG} install: {report.summary()}")
    return 0


def _cmd_status_serve(args: argparse.Namespace) -> int:
    from convocate.status_server import StatusConfig, StatusServer

    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    config = StatusConfig(paths=Paths.from_env(), listen=args.listen, domain=args.domain,
                          dnsmasq_pid_file=args.dnsmasq_pid_file or None)

    async def run() -> None:
        server = StatusServer(config)
        await server.start()
        await server.serve_forever()

    asyncio.run(run())
    return 0


# --- create and attach ------------------------------------------------------------------
def _lifecycle_params(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for attr, key in (("port", "port"), ("protocol", "protocol"), ("dns", "dns_name"), ("cpus", "cpus"),
                      ("memory", "memory_mb"), ("credential", "credential")):
        value = getattr(args, attr, None)
        if value is not None:
            params[key] = value
    return params


async def _cmd_new(args: argparse.Namespace, cluster: Cluster) -> int:
    params = {"name": args.name, **_lifecycle_params(args), "start": not args.no_start}
    if not params.get("credential"):
        params.pop("credential", None)  # the default: an older agent without credentials still answers
    if args.agent or len(cluster.clients) == 1:
        client = cluster.client(args.agent) if args.agent else next(iter(cluster.clients.values()))
        result = await client.call("create", params)
    else:  # placement (issue 18): the agent with the most headroom, the next one if it refuses late
        from convocate.fleet import create_placed

        client, result = await create_placed(cluster.clients, params, on_skip=lambda agent, e: print(
            f"{PROG}: {messages.PLACEMENT_SKIPPED.format(agent=agent, reason=e)}", file=sys.stderr))
    _report(args, "created", result, client)
    if args.attach:
        view = _view(result, client.agent_id)
        return await _attach(SessionRef(client, view), read_only=False, start=True)
    return 0


async def _attach(ref: SessionRef, *, read_only: bool, start: bool) -> int:
    from convocate.terminal import attach_terminal

    view = ref.view
    if not view.running:
        if not start:
            raise BadRequest(f'session "{view.meta.name}" is not running; start it with `{PROG} restart`')
        print(f"starting {view.meta.name} ({view.meta.uuid[:8]}) on {ref.client.agent_id} ...", file=sys.stderr)
        await ref.client.call("restart", {"id": view.meta.uuid})
    await attach_terminal(ref.client, view.meta.uuid, view.meta.name, read_only=read_only)
    after = _view(await ref.client.call("get", {"id": view.meta.uuid}), ref.client.agent_id)
    if after.running:
        print(f"[convocate] detached from {view.meta.name}; it keeps running", file=sys.stderr)
    else:
        print(f"[convocate] session {view.meta.name} has ended (its agent command exited); "
              f"`{PROG} restart {view.meta.name}` starts it again", file=sys.stderr)
    return 0


async def _cmd_attach(args: argparse.Namespace, cluster: Cluster) -> int:
    ref = await cluster.resolve(args.ref)
    return await _attach(ref, read_only=args.read_only, start=not args.no_start)


# --- simple lifecycle verbs --------------------------------------------------------------
def _simple(op: str, verb: str) -> Command:
    async def run(args: argparse.Namespace, cluster: Cluster) -> int:
        ref = await cluster.resolve(args.ref)
        result = await ref.client.call(op, {"id": ref.view.meta.uuid})
        if op == "delete":
            if args.json:
                _print_json(result)
            else:
                print(f"deleted {ref.view.meta.name} ({ref.view.meta.uuid[:8]}) on {ref.client.agent_id}; "
                      f"its home is in the agent's trash as {result.get('trash', '?')}")
        elif op == "override":
            if args.json:
                _print_json(result)
            else:
                print(f"override {session_summary(_view(result['session'], ref.client.agent_id))}: "
                      f"detached {result['detached']} client(s)"
                      + (f", cleared a stale lock of {result['cleared_lock']}" if result["cleared_lock"] else ""))
        else:
            _report(args, verb, result, ref.client)
        return 0

    return run


async def _cmd_clone(args: argparse.Namespace, cluster: Cluster) -> int:
    ref = await cluster.resolve(args.ref)
    result = await ref.client.call("clone", {"source_id": ref.view.meta.uuid, "name": args.name})
    _report(args, "cloned into", result, ref.client)
    return 0


async def _cmd_edit(args: argparse.Namespace, cluster: Cluster) -> int:
    ref = await cluster.resolve(args.ref)
    params = {"id": ref.view.meta.uuid, **_lifecycle_params(args)}
    if args.name is not None:
        params["name"] = args.name
    if len(params) == 1:
        raise BadRequest("nothing to change: give --name, --port, --protocol, --dns, --cpus, --memory or --credential")
    result = await ref.client.call("edit", params)
    _report(args, "edited", result, ref.client)
    if ref.view.running and any(k in params for k in ("port", "protocol", "cpus", "memory_mb", "credential")):
        print(f"{PROG}: port, limits and credential take effect at the next `{PROG} restart`", file=sys.stderr)
    return 0


async def _cmd_send(args: argparse.Namespace, cluster: Cluster) -> int:
    ref = await cluster.resolve(args.ref)
    result = await ref.client.call("send", {"id": ref.view.meta.uuid, "text": " ".join(args.text),
                                            "enter": not args.no_enter})
    if args.json:
        _print_json(result)
    return 0


async def _cmd_capture(args: argparse.Namespace, cluster: Cluster) -> int:
    ref = await cluster.resolve(args.ref)
    result = await ref.client.call("capture", {"id": ref.view.meta.uuid, "lines": args.lines})
    if args.json:
        _print_json(result)
    else:
        sys.stdout.write(result["text"].rstrip("\n") + "\n")  # the pane's unused rows are blank lines
    return 0


async def _cmd_logs(args: argparse.Namespace, cluster: Cluster) -> int:
    ref = await cluster.resolve(args.ref)
    params: dict[str, Any] = {"id": ref.view.meta.uuid, "lines": args.lines}
    while True:
        result = await ref.client.call("logs", params)
        for line in result["lines"]:
            print(line, flush=True)
        if not args.follow:
            return 0
        params = {"id": ref.view.meta.uuid, **({"since": result["last"]} if result["last"] else {})}
        await asyncio.sleep(1.0)


WAIT_STATES = ("waiting", "idle", "exited", "working", "crashed", "limited")


async def _cmd_wait(args: argparse.Namespace, cluster: Cluster) -> int:
    """Return when the session's activity is ``--for``; exit 124 (as timeout(1)) when the time is up."""
    ref = await cluster.resolve(args.ref)
    sid, client = ref.view.meta.uuid, ref.client
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.timeout if args.timeout else None

    async def current() -> str:
        return SessionView.from_wire(await client.call("get", {"id": sid}), client.agent_id).meta.activity

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
    result = await client.call("send", {"id": sid, "text": text, "enter": True})
    if not args.wait:
        if args.json:
            _print_json(result)
        else:
            print(messages.REPLY_SENT.format(name=name))
        return 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.timeout
    while True:
        now = SessionView.from_wire(await client.call("get", {"id": sid}), client.agent_id).meta.activity
        if now != "waiting":
            if args.json:
                _print_json({**result, "activity": now})
            else:
                print(messages.REPLY_TAKEN.format(name=name, activity=now or "without activity"))
            return 0
        if loop.time() >= deadline:
            print(f"{PROG}: {messages.REPLY_STILL_WAITING.format(name=name, timeout=args.timeout)}", file=sys.stderr)
            return 124
        await asyncio.sleep(min(0.5, max(0.0, deadline - loop.time())))
# --- auth (issue 15) ------------------------------------------------------------------
def _kind(args: argparse.Namespace) -> str:
    """``api_key`` or ``oauth_token`` from the flags; a value given to either flag is refused unseen."""
    flags = ("api_key", "oauth_token")  # each flag's dest is the kind it names
    if args.stray or any(getattr(args, flag) not in (None, True) for flag in flags):
        raise BadRequest(messages.AUTH_SECRET_IN_ARGV)
    chosen = [flag for flag in flags if getattr(args, flag) is True]
    if len(chosen) != 1:
        raise BadRequest("give exactly one of --api-key and --oauth-token")
    return chosen[0]


async def _cmd_auth_set(args: argparse.Namespace, cluster: Cluster) -> int:
    from convocate import auth

    kind = _kind(args)
    name = validate_name(args.name)
    secret = auth.read_secret(args.from_file, sys.stdin, f"{'API key' if kind == 'api_key' else 'OAuth token'} "
                                                         f"for credential {name} (not echoed): ")
    credential, outcomes = await auth.set_credential(cluster.paths, cluster, name, kind, secret)
    return _auth_sent(args, [credential], outcomes)


def _auth_sent(args: argparse.Namespace, credentials: list[Any], outcomes: list[Any]) -> int:
    from convocate import auth

    if args.json:
        _print_json({"credentials": [c.summary() for c in credentials],
                     "agents": [{"agent_id": o.agent_id, "ok": o.error is None,
                                 **({"error": str(o.error)} if o.error else {"results": o.results})}
                                for o in outcomes]})
        failed = sum(o.error is not None for o in outcomes)
    else:
        failed = auth.print_outcomes(outcomes, lambda o: "; ".join(
            messages.AUTH_SET_OK.format(agent=o.agent_id, name=r["name"], kind=r["kind"], fingerprint=r["fingerprint"])
            for r in o.results))
    if failed:
        print(f"{PROG}: " + messages.AUTH_PUSH_HINT.format(failed=failed, total=len(outcomes)), file=sys.stderr)
        return 1
    return 0


async def _cmd_auth_push(args: argparse.Namespace, cluster: Cluster) -> int:
    from convocate import auth

    credentials, outcomes = await auth.push(cluster.paths, cluster, validate_name(args.name) if args.name else None)
    return _auth_sent(args, credentials, outcomes)


async def _cmd_auth_status(args: argparse.Namespace, cluster: Cluster) -> int:
    from convocate import auth

    rows, errors, note = await auth.status(cluster.paths, cluster)
    if args.json:
        _print_json({"credentials": [r.to_json() for r in rows],
                     "errors": {a: str(e) for a, e in sorted(errors.items())}, "note": note})
    else:
        print(format_table([(r.agent_id, r.name, r.kind or "-", r.fingerprint or "-", r.state or "-") for r in rows],
                           ("AGENT", "NAME", "KIND", "FINGERPRINT", "STATE")))
    if not args.json:
        for agent_id, error in sorted(errors.items()):
            print(f"{PROG}: agent {agent_id} unavailable: {error}", file=sys.stderr)
        if note:
            print(f"{PROG}: {note}", file=sys.stderr)
    return 1 if errors or any(r.state not in (auth.IN_SYNC, "") for r in rows) else 0


async def _cmd_auth_rm(args: argparse.Namespace, cluster: Cluster) -> int:
    from convocate import auth

    name = validate_name(args.name)
    had, outcomes = await auth.remove(cluster.paths, cluster, name)
    if args.json:
        _print_json({"name": name, "shell": had, "agents": [
            {"agent_id": o.agent_id, "ok": o.error is None, "removed": bool(o.results and o.results[0]),
             **({"error": str(o.error)} if o.error else {})} for o in outcomes]})
        failed = sum(o.error is not None for o in outcomes)
    else:
        print(f"shell host: {name} {'removed' if had else 'was not there'}")
        failed = auth.print_outcomes(outcomes, lambda o: (messages.AUTH_RM_OK if o.results and o.results[0]
                                                          else messages.AUTH_RM_ABSENT).format(agent=o.agent_id,
                                                                                               name=name))
    if failed:
        print(f"{PROG}: {failed} of {len(outcomes)} agent(s) did not answer; run `{PROG} auth rm {name}` again "
              "once they do", file=sys.stderr)
        return 1
    return 0


# --- parser ---------------------------------------------------------------------------
def _add_limits(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, help="published port: 0 none, -1 auto (lowest free >= 1001)")
    p.add_argument("--protocol", choices=["tcp", "udp"], help="port protocol [tcp]")
    p.add_argument("--dns", help="DNS name for the session (RFC 1123)")
    p.add_argument("--cpus", type=float, help="CPU limit in cores [agent default]")
    p.add_argument("--memory", type=int, help="memory limit in MiB [agent default]")
    p.add_argument("--credential", type=_session_credential,
                   help=f"cluster credential to start with ('' for the agent's {DEFAULT_NAME}) [{DEFAULT_NAME}]")


def _session_credential(value: str) -> str:
    try:
        return validate_session_credential(value)
    except BadRequest as e:
        raise argparse.ArgumentTypeError(e.message.removeprefix('field "credential": ')) from None


def build_parser() -> argparse.ArgumentParser:
    common = ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print the result as JSON")
    parser = ArgumentParser(prog=PROG, usage=usage_line(USAGE), add_help=False)
    sub = parser.add_subparsers(dest="command", prog=PROG)

    p = sub.add_parser("ls", parents=[common], help="list sessions")
    p.add_argument("--waiting", action="store_true", help="only sessions waiting for the operator, with their question")
    p.add_argument("--wide", action="store_true",
                   help="also each session's image and the Claude Code version its container runs")
    p.set_defaults(func=_cmd_ls)
    p = sub.add_parser("agents", parents=[common], help="list agents")
    p.set_defaults(func=_cmd_agents)
    p = sub.add_parser("whoami", parents=[common], help="who each agent takes you for")
    p.set_defaults(func=_cmd_whoami)

    p = sub.add_parser("events", parents=[common], help="stream events")
    p.set_defaults(func=_cmd_events, local=True)

    p = sub.add_parser("status-serve", parents=[common], help="run the status listener")
    p.add_argument("--listen", default=":223", help="SSH listen address HOST:PORT [%(default)s]")
    p.add_argument("--domain", help="cluster DNS domain [/etc/convocate/domain, else convocate.internal]")
    p.add_argument("--dnsmasq-pid-file", type=lambda v: Path(v) if v else None,
                   default=Path("/run/dnsmasq/dnsmasq.pid"),
                   help="dnsmasq PID file, signalled when the hosts file changes; '' never signals [%(default)s]")
    p.add_argument("--log-level", default=os.environ.get("CONVOCATE_LOG_LEVEL", "info"),
                   choices=["debug", "info", "warning", "error"], help="log verbosity [%(default)s]")
    p.set_defaults(func=_cmd_status_serve, daemon=True)

    p = sub.add_parser("image-status", parents=[common], help="is the session image built",
                       description="Say whether this shell host's session image is built, being built, or why "
                       "not, and how to build it; exit 78 until it is built.")
    p.set_defaults(func=_cmd_image_status, local=True)

    p = sub.add_parser("install", parents=[common], help="set up this shell host",
                       description="Idempotent setup of a shell host; the package's postinst runs it with the "
                       "debconf answers.")
    p.add_argument("--image", action=argparse.BooleanOptionalAction, default=None,
                   help="build the session image; given explicitly, a missing Docker is an error "
                   "(--no-image: do not) [build it when Docker answers]")
    p.add_argument("--image-in-background", action="store_true",
                   help="start convocate-image-build.service without waiting instead of building here "
                   "(what the package's postinst does)")
    p.add_argument("--print-defaults", action="store_true",
                   help="only print /etc/default/convocate as --status-port and --base-image make it "
                   "(the postinst merges it with ucf)")
    p.add_argument("--base-image", help="local image to build the session image FROM (offline clusters)")
    p.add_argument("--claude-code", help="Claude Code version from npm, or 'none' for the stand-in "
                   "[the pin in <image context>/claude-code.version]")
    p.add_argument("--image-tag", help="session image tag [convocate:<version>]")
    p.add_argument("--image-context", type=Path, help="session image build context [/usr/share/convocate/image]")
    p.add_argument("--domain", help="the cluster's DNS domain [keep the current one]")
    p.add_argument("--status-port", help="port of the status listener [keep the current one, else 223]")
    p.set_defaults(func=_cmd_install, local=True)

    p = sub.add_parser("new", parents=[common], help="create a session")
    p.add_argument("name")
    p.add_argument("--agent", help="agent ID [placement: the agent with the most headroom that admits it]")
    _add_limits(p)
    p.add_argument("--no-start", action="store_true", help="create without starting")
    p.add_argument("--attach", action="store_true", help="attach right after starting")
    p.set_defaults(func=_cmd_new)

    p = sub.add_parser("attach", parents=[common], help="attach to a session")
    p.add_argument("ref")
    p.add_argument("--read-only", action="store_true", help="observe without typing")
    p.add_argument("--no-start", action="store_true", help="fail instead of starting a stopped session")
    p.set_defaults(func=_cmd_attach)

    for op, verb in (("kill", "killed"), ("restart", "restarted"), ("delete", "deleted"),
                     ("background", "backgrounded"), ("override", "override")):
        p = sub.add_parser(op, parents=[common], help=f"{op} a session")
        p.add_argument("ref")
        p.set_defaults(func=_simple(op, verb))

    p = sub.add_parser("clone", parents=[common], help="clone a session")
    p.add_argument("ref")
    p.add_argument("name")
    p.set_defaults(func=_cmd_clone)

    p = sub.add_parser("edit", parents=[common], help="edit a session")
    p.add_argument("ref")
    p.add_argument("--name", help="new name")
    _add_limits(p)
    p.set_defaults(func=_cmd_edit)

    p = sub.add_parser("send", parents=[common], help="type text into a session")
    p.add_argument("ref")
    p.add_argument("text", nargs="+")
    p.add_argument("--no-enter", action="store_true", help="do not press Enter after the text")
    p.set_defaults(func=_cmd_send)

    p = sub.add_parser("reply", parents=[common], help="answer a session waiting for the operator",
                       description="Type TEXT (or stdin, for -) into a session that waits for the operator, "
                       "then Enter, as send does; refused (exit 4) when the session is not waiting.")
    p.add_argument("ref")
    p.add_argument("text", nargs="+", help="the answer; - reads it from stdin")
    p.add_argument("--force", action="store_true", help="type it even when the session is not waiting")
    p.add_argument("--wait", action="store_true", help="return once the session has left waiting")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="with --wait: give up after S seconds (exit 124) [%(default)s]")
    p.set_defaults(func=_cmd_reply)

    p = sub.add_parser("logs", parents=[common], help="show a session's logs")
    p.add_argument("ref")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.add_argument("--lines", type=int, default=200, help="how many of the last lines [%(default)s]")
    p.set_defaults(func=_cmd_logs)

    p = sub.add_parser("wait", parents=[common], help="wait for a session's activity")
    p.add_argument("ref")
    p.add_argument("--for", dest="state", required=True, choices=WAIT_STATES)
    p.add_argument("--timeout", type=float, default=0.0, help="give up after S seconds (exit 124) [no limit]")
    p.set_defaults(func=_cmd_wait)

    auth = sub.add_parser("auth", help="the cluster's Claude credentials",
                          description="Store Claude credentials on the shell host (root, 0600) and send them to "
                          "every agent; sessions get theirs at each start.")
    auth_sub = auth.add_subparsers(dest="auth_command", prog=f"{PROG} auth", required=True)
    p = auth_sub.add_parser("set", parents=[common], help="store a credential and send it to every agent",
                            description="The secret comes from --from-file, stdin, or a no-echo prompt; never "
                            "from the command line.")
    p.add_argument("--name", default=DEFAULT_NAME, help="credential name [%(default)s]")
    # nargs="?" so that a secret typed after the flag is caught and refused without being echoed.
    p.add_argument("--api-key", nargs="?", const=True, default=None, metavar="",
                   help="an Anthropic API key (ANTHROPIC_API_KEY)")
    p.add_argument("--oauth-token", nargs="?", const=True, default=None, metavar="",
                   help="a long-lived OAuth token from `claude setup-token` (CLAUDE_CODE_OAUTH_TOKEN)")
    p.add_argument("--from-file", type=Path, help="read the secret from FILE ('-' for stdin)")
    p.add_argument("stray", nargs="*", help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_auth_set)
    p = auth_sub.add_parser("push", parents=[common], help="send the stored credentials to every agent again")
    p.add_argument("--name", help="only this credential [all]")
    p.set_defaults(func=_cmd_auth_push)
    p = auth_sub.add_parser("status", parents=[common], help="which agent holds which credential")
    p.set_defaults(func=_cmd_auth_status)
    p = auth_sub.add_parser("rm", parents=[common], help="remove a credential everywhere")
    p.add_argument("name")
    p.set_defaults(func=_cmd_auth_rm)

    p = sub.add_parser("trash", parents=[common], help="list deleted sessions")
    p.set_defaults(func=_cmd_trash)
    p = sub.add_parser("restore", parents=[common], help="restore a deleted session")
    p.add_argument("trash_id")
    p.set_defaults(func=_cmd_restore)

    p = sub.add_parser("audit", parents=[common], help="the agents' audit trails; --verify checks them")
    p.add_argument("--session", help="only records about this session (UUID, prefix or name)")
    p.add_argument("--operator", help="only this verified operator (name or SHA256: fingerprint)")
    p.add_argument("--since", help="records at or after this RFC 3339 time")
    p.add_argument("--until", help="records at or before this RFC 3339 time")
    p.add_argument("--agent", help="only this agent")
    p.add_argument("--verify", action="store_true", help="check each chain's seq and prev; exit 1 if broken")
    p.add_argument("--file", type=Path, help="read this audit file (- for stdin) instead of the agents")
    p.set_defaults(func=_cmd_audit, local=True)

    p = sub.add_parser("capture", parents=[common], help="print a session's screen")
    p.add_argument("ref")
    p.add_argument("--lines", type=int, default=0, help="also include N lines of history")
    p.set_defaults(func=_cmd_capture)
    replay.add_parsers(sub, common)  # replay, grep (issue 19)
    fleet_cli.add_parsers(sub, common)  # place, drain, undrain (issue 18)
    return parser


async def _run(args: argparse.Namespace) -> int:
    cluster = Cluster(Paths.from_env())
    try:
        return await args.func(args, cluster)
    finally:
        await cluster.close()


def main(argv: list[str] | None = None) -> int:
    """Run the ``convocate`` command line; returns the exit status."""

    def run(args: list[str]) -> int:
        if not args:
            from convocate.tui.app import run_tui

            return run_tui(Paths.from_env())
        if args[0] == "-c":  # invoked as a login shell with a command (ssh claude@shell CMD, scp, ...)
            raise BadRequest("this account runs the convocate TUI and does not run commands; "
                             "log in without a command, or use the convocate CLI from your own account")
        parsed = build_parser().parse_args(args)
        if getattr(parsed, "daemon", False):
            try:
                return parsed.func(parsed)
            except OSError as e:  # e.g. the listen address is taken
                raise ConfigError(str(e)) from e
        if getattr(parsed, "local", False):
            return asyncio.run(parsed.func(parsed))
        return asyncio.run(_run(parsed))

    return run_main(PROG, USAGE, sys.argv[1:] if argv is None else argv, run, help_when_empty=False)
