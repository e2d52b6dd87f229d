"""The verbs that work on this host alone: no agent is asked (issue 17: loaded only for them).

``install``, ``status-serve``, ``image-status``, ``events`` (status-serve's local socket) and
``audit`` (which opens its own cluster when it reads the agents' trails).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

from convocate.cli import PROG
from convocate.common.errors import ConfigError
from convocate.common.paths import Paths
from convocate.events import format_message, subscribe
from convocate.localstatus import AGENT_SESSIONS
from convocate.render import print_json


async def _cmd_image_status(args: argparse.Namespace) -> int:
    from convocate import image_status
    from convocate.shell_install import default_image_tag

    paths = Paths.from_env()
    tag = default_image_tag()
    problem = image_status.problem(paths, tag)
    build = image_status.load(paths.image_build_status)
    if args.json:
        print_json({"tag": tag, "ready": problem is None, "build": None if build is None else vars(build),
                     "problem": problem})
    elif problem is None:
        print(f"session image {tag}: built {build.finished if build else ''}".rstrip())
    else:
        print(problem)
    return 0 if problem is None else ConfigError.exit_code


async def _cmd_audit(args: argparse.Namespace) -> int:
    from convocate.audit import AuditQuery, run_audit
    from convocate.cluster import Cluster

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
        if message.get("type") == AGENT_SESSIONS:  # status-serve's copy of each agent's list: for ls, not events
            continue
        if args.json:
            print(json.dumps(message, ensure_ascii=False), flush=True)
        else:
            print(format_message(message), flush=True)
    return 0


async def _cmd_install(args: argparse.Namespace) -> int:
    from convocate.common.hostsetup import print_install_report
    from convocate.shell_install import ShellInstallOptions, install, render_defaults

    if args.print_defaults:
        sys.stdout.write(render_defaults(args.status_port, args.base_image))
        return 0

    options = ShellInstallOptions(build_image=args.image is not False, require_image=args.image is True,
                                  background_image=args.image_in_background,
                                  base_image=args.base_image or None,
                                  claude_code=args.claude_code, image_tag=args.image_tag,
                                  image_context=args.image_context, domain=args.domain, status_port=args.status_port)
    return print_install_report(PROG, install(Paths.from_env(), options), args.json, indent=2)


def _cmd_status_serve(args: argparse.Namespace) -> int:
    from convocate.status_server import StatusConfig, StatusServer

    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    config = StatusConfig(paths=Paths.from_env(), listen=args.listen, domain=args.domain,
                          dnsmasq_pid_file=args.dnsmasq_pid_file or None)

    asyncio.run(StatusServer(config).serve())
    return 0
