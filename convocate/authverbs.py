"""The ``convocate auth`` verbs (issue 15): set, push, status and rm of the cluster's Claude credentials.

Adapters only, as :mod:`convocate.commands`'s: the work is :mod:`convocate.auth`'s. A secret is
read from a file or stdin, never from the command line.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from convocate.cli import PROG
from convocate.cluster import Cluster
from convocate.common import messages
from convocate.common.credentials import validate_name
from convocate.common.errors import BadRequest
from convocate.render import format_table, print_json


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
        print_json({"credentials": [c.summary() for c in credentials],
                     "agents": [{"agent_id": o.agent_id, "ok": o.error is None,
                                 **({"error": str(o.error)} if o.error else {"results": [r.received for r in o.results]})}
                                for o in outcomes]})
        failed = sum(o.error is not None for o in outcomes)
    else:
        failed = auth.print_outcomes(outcomes, lambda o: "; ".join(
            messages.AUTH_SET_OK.format(agent=o.agent_id, name=r.name, kind=r.kind, fingerprint=r.fingerprint)
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
        print_json({"credentials": [r.to_json() for r in rows],
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
        print_json({"name": name, "shell": had, "agents": [
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
