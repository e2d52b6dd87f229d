"""``convocate place``, ``drain`` and ``undrain``: the fleet commands (issue 18; the logic is :mod:`convocate.fleet`).

The parser part is loaded with every verb's parser, so the work is imported inside each command.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

PROG = "convocate"


async def cmd_place(args: argparse.Namespace, cluster: Any) -> int:
    """Print where a session of ``--cpus``/``--memory`` would go, and why; exit 6 when no agent takes it."""
    from convocate import fleet
    from convocate.placement import format_ranking

    choices = await fleet.ranking(cluster.clients.values(), args.cpus, args.memory)
    if args.json:
        print(fleet.ranking_json(choices))
    else:
        for line in format_ranking(choices):
            print(line)
    return 0 if any(c.admits for c in choices) else 6


async def cmd_drain(args: argparse.Namespace, cluster: Any) -> int:
    """Mark an agent draining and move its sessions away; exit 1 when some stayed."""
    from convocate import fleet
    from convocate.common import messages

    cluster.client(args.agent)  # NotFound names the registered agents
    mover = None if args.no_move else _mover(cluster)
    report = await fleet.drain(cluster.clients, args.agent, mover,
                               progress=lambda line: print(f"{PROG}: {line}", file=sys.stderr))
    if args.json:
        print(json.dumps({"agent_id": args.agent, "moved": [{"name": n, "agent_id": a} for n, a in report.moved],
                          "stayed": [{"name": n, "reason": r} for n, r in report.stayed]}, indent=2))
    elif mover is not None:
        print(messages.DRAIN_DONE.format(agent=args.agent, moved=len(report.moved), stayed=len(report.stayed)))
    return 1 if report.stayed else 0


def _mover(cluster: Any) -> Any:
    """Moves one session for :func:`fleet.drain` (``convocate move``'s engine)."""
    async def move(session_id: str, target: str) -> None:
        from convocate import move  # loaded only when something moves

        await move.move(cluster, session_id, target, state_dir=cluster.paths.shell_state_dir)

    return move


async def cmd_undrain(args: argparse.Namespace, cluster: Any) -> int:
    """Let an agent admit new sessions again."""
    from convocate import fleet
    from convocate.common import messages

    await fleet.undrain(cluster.client(args.agent))
    if not args.json:
        print(messages.UNDRAINED.format(agent=args.agent))
    return 0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``place``, ``drain`` and ``undrain`` to the ``convocate`` parser's subcommands."""
    p = sub.add_parser("place", parents=[common], help="where a new session would go, and why",
                       description="Rank the agents for a session of the given size as `convocate new` without "
                       "--agent does: only agents whose admission rule takes it, the most headroom first "
                       "(the smallest free share of CPU and memory reservations, live load and free memory), "
                       "ties to fewer running sessions. Asks each agent for its capacity; changes nothing. "
                       "Exit 6 when no agent takes it.")
    p.add_argument("--dry-run", action="store_true", help="only print the ranking (what place always does)")
    p.add_argument("--cpus", type=float, help="CPUs of the session in cores [each agent's default]")
    p.add_argument("--memory", type=int, help="memory of the session in MiB [each agent's default]")
    p.add_argument("name", nargs="?", help="the session's name (not needed to rank)")
    p.set_defaults(func=cmd_place)

    p = sub.add_parser("drain", parents=[common], help="empty an agent: no new session, its sessions move away",
                       description="Turn the agent's draining setting on (it takes no new session; the TUI shows "
                       "it), then move its sessions one at a time, running ones first, each to the agent "
                       "placement picks among the others. Exit 1 if a session could not move (each is named "
                       "with why).")
    p.add_argument("agent", help="agent ID")
    p.add_argument("--no-move", action="store_true", help="only mark the agent draining")
    p.set_defaults(func=cmd_drain)

    p = sub.add_parser("undrain", parents=[common], help="let a drained agent take new sessions again")
    p.add_argument("agent", help="agent ID")
    p.set_defaults(func=cmd_undrain)
