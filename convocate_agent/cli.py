"""Command line of ``convocate-agent``: install, serve, version, help.

Parsers build a config and call the logic; only :func:`main` catches the
project's error, prints it to stderr and returns its exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path

from convocate.common.argparser import verb_parser
from convocate.common.cli import run_main, usage_line
from convocate.common.constants import AGENT_PORT, STATUS_PORT
from convocate.common.errors import ConfigError
from convocate.common.paths import CLAUDE_GID, CLAUDE_UID, Paths

PROG = "convocate-agent"

USAGE = f"""\
usage: {PROG} <command> [options]

The convocate agent: runs Claude Code session containers on this host and
serves them to shell hosts over SSH (subsystems convocate-agent-rpc and
convocate-agent-attach).

commands:
  install       bootstrap this host (account, agent ID, host key, slice limits); idempotent
  serve         run the agent (the systemd unit runs this)
  prune-images  remove convocate:* images no container uses (run daily by a timer)
  load-image    load a session image archive from stdin after checking its SHA-256
  image-info    print whether an image tag is present, as JSON
  version       print the version
  help          print this help

Run '{PROG} <command> --help' for a command's options.
Set CONVOCATE_ROOT to relocate every path under a directory (tests, demo).
"""


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the agent", description="Serve the agent's SSH subsystems until stopped.")
    p.add_argument("--listen", default=f":{AGENT_PORT}", help="SSH listen address HOST:PORT [%(default)s]")
    p.add_argument("--host-key", type=Path, help="ed25519 host key [/etc/convocate-agent/ssh_host_ed25519_key]")
    p.add_argument("--auth-keys", type=Path, help="authorized keys [/etc/convocate-agent/authorized_keys]")
    p.add_argument("--shell-host", help="shell host for status events [read from /etc/convocate-agent/shell-host]")
    p.add_argument("--shell-port", type=int, default=STATUS_PORT, help="shell status port [%(default)s]")
    p.add_argument("--shell-key", type=Path, help="status client key [/etc/convocate-agent/agent_to_shell_ed25519_key]")
    p.add_argument("--shell-known-host", type=Path,
                   help="pinned shell status host key [/etc/convocate-agent/shell_known_host]")
    p.add_argument("--status-queue-limit", type=int, default=10_000,
                   help="events kept while the shell is unreachable; older ones are dropped [%(default)s]")
    p.add_argument("--log-socket", type=Path, default=os.environ.get("CONVOCATE_AGENT_LOG_SOCKET") or None,
                   help="rsyslog socket that session containers log to through Docker's syslog driver "
                   "[$CONVOCATE_AGENT_LOG_SOCKET; none: Docker's default driver]")
    p.add_argument("--docker-path-prefix", default=os.environ.get("CONVOCATE_AGENT_DOCKER_PATH_PREFIX", ""),
                   help="where this host's files appear to dockerd, when the agent runs in a container and "
                   "drives the outer host's dockerd [$CONVOCATE_AGENT_DOCKER_PATH_PREFIX; none]")
    p.add_argument("--host-cpus", type=_host_cpus, default=None,
                   help="CPUs that admission control and the sessions' cgroup cap count this host as having, "
                   "to admit more sessions than the host's cores hold at their reservation (sessions that "
                   "mostly wait) [the CPUs this process may use]")
    p.add_argument("--rpc-idle-timeout", type=float, default=600.0,  # convocate_agent.rpc.IDLE_TIMEOUT_S
                   help="seconds a held RPC channel may stay silent between requests [%(default)g]")
    p.add_argument("--log-level", default=os.environ.get("CONVOCATE_LOG_LEVEL", "info"),
                   choices=["debug", "info", "warning", "error"], help="log verbosity [%(default)s]")
    p.set_defaults(func=_cmd_serve)


def _host_cpus(value: str) -> float:
    """``--host-cpus``: a positive number of cores (argparse type)."""
    try:
        cpus = float(value)
    except ValueError:
        cpus = 0.0
    if not 0 < cpus <= 1_000_000:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of cores above 0")
    return cpus


def _add_install(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("install", help="bootstrap this host", description="Idempotent bootstrap of an agent host; "
                       "the package's postinst runs it with the debconf answers.")
    p.add_argument("--shell-host", help="shell host for status events, '' for none [keep the current one]")
    p.add_argument("--listen-port", help=f"SSH port of the agent [keep the current one, else {AGENT_PORT}]")
    p.add_argument("--shell-port", help=f"status port on the shell host [keep the current one, else {STATUS_PORT}]")
    p.add_argument("--print-defaults", action="store_true",
                   help="only print /etc/default/convocate-agent as --listen-port and --shell-port make it "
                   "(the postinst merges it with ucf)")
    p.set_defaults(func=_cmd_install)


def _cmd_install(args: argparse.Namespace) -> int:
    from convocate.common.hostsetup import print_install_report
    from convocate_agent.install import InstallOptions, check_port, install, render_defaults

    if args.print_defaults:
        sys.stdout.write(render_defaults(args.listen_port, args.shell_port))
        return 0

    options = InstallOptions(
        shell_host=args.shell_host,
        listen_port=None if args.listen_port is None else check_port(args.listen_port, "--listen-port"),
        shell_port=None if args.shell_port is None else check_port(args.shell_port, "--shell-port"),
    )
    return print_install_report(PROG, install(Paths.from_env(), uid=CLAUDE_UID, gid=CLAUDE_GID, options=options),
                                args.json)


def _add_prune_images(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune-images", help="remove unused session images",
                       description="Remove the convocate:* image tags that are not the current image and that no "
                       "container uses (convocate-image-prune.timer runs this daily).")
    p.add_argument("--dry-run", action="store_true", help="only print what would be removed")
    p.add_argument("--quiet", action="store_true", help="print only the removed tags and errors")
    p.set_defaults(func=_cmd_prune_images)


def _cmd_prune_images(args: argparse.Namespace) -> int:
    from convocate_agent.images import prune_images

    report = prune_images(Paths.from_env(), dry_run=args.dry_run)
    if args.json:
        print(json.dumps({"ok": not report.failed, "dry_run": args.dry_run, "removed": report.removed,
                          "failed": report.failed, "skipped": report.skipped or None}))
        return 1 if report.failed else 0
    if report.skipped and not args.quiet:
        print(f"nothing pruned: {report.skipped}")
    for tag in report.removed:
        print(f"{'would remove' if args.dry_run else 'removed'} {tag}")
    for failure in report.failed:
        print(f"{PROG}: could not remove {failure}", file=sys.stderr)
    if not args.quiet and not report.skipped and not report.removed and not report.failed:
        print("nothing to prune")
    return 1 if report.failed else 0


def _add_load_image(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("load-image", help="load a session image archive",
                       description="Read a `docker save` archive, check its SHA-256, then load it into Docker; "
                       "on a mismatch nothing is loaded (convocate-host init-agent and update stream images here).")
    p.add_argument("--sha256", required=True, help="the archive's SHA-256 as the sender computed it")
    p.add_argument("--tag", required=True, help="the image tag the archive carries (convocate:<version>)")
    p.add_argument("--set-current", action="store_true", help="make it this agent's current image")
    p.add_argument("--size", type=int, help="the archive's size in bytes, for the progress bar's ETA [unknown]")
    p.add_argument("archive", nargs="?", default="-", help="archive file, or - for stdin [%(default)s]")
    p.set_defaults(func=_cmd_load_image)


def _cmd_load_image(args: argparse.Namespace) -> int:
    from convocate_agent.images import load_image

    paths = Paths.from_env()
    owner = (CLAUDE_UID, CLAUDE_GID) if not paths.relocated and os.geteuid() == 0 else (None, None)
    if args.archive == "-":
        loaded = load_image(paths, sys.stdin.buffer, sha256=args.sha256, tag=args.tag, set_current=args.set_current,
                            uid=owner[0], gid=owner[1], size_hint=args.size, progress=sys.stderr)
    else:
        with open(args.archive, "rb") as source:
            loaded = load_image(paths, source, sha256=args.sha256, tag=args.tag, set_current=args.set_current,
                                uid=owner[0], gid=owner[1], size_hint=args.size or os.fstat(source.fileno()).st_size,
                                progress=sys.stderr)
    print(json.dumps({"tag": loaded.tag, "id": loaded.image_id, "bytes": loaded.size,
                      "current_set": loaded.current_set}))
    return 0


def _add_image_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("image-info", help="is an image tag present", description="Print {tag, present, id} as JSON.")
    p.add_argument("tag")
    p.set_defaults(func=_cmd_image_info)


def _cmd_image_info(args: argparse.Namespace) -> int:
    from convocate_agent.images import image_info

    print(json.dumps(image_info(args.tag)))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from convocate_agent.server import AgentServer, ServeConfig

    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    config = ServeConfig(
        paths=Paths.from_env(), listen=args.listen, host_key=args.host_key, auth_keys=args.auth_keys,
        shell_host=args.shell_host, shell_port=args.shell_port, shell_key=args.shell_key,
        shell_known_host=args.shell_known_host, status_queue_limit=args.status_queue_limit,
        rpc_idle_timeout=args.rpc_idle_timeout,
        docker_path_prefix=args.docker_path_prefix, log_socket=args.log_socket, host_cpus=args.host_cpus,
    )

    asyncio.run(AgentServer(config).serve())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser, verbs = verb_parser(PROG, usage_line(USAGE),
                                (_add_install, _add_serve, _add_prune_images, _add_load_image, _add_image_info))
    for name, p in verbs.items():
        p.add_argument("--json", action="store_true",
                       help="print errors as {\"ok\": false, \"code\", \"error\"} on stdout"
                       + ("" if name == "serve" else ", and the result as JSON"))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``convocate-agent`` command line; returns the exit status."""

    def run(args: list[str]) -> int:
        parsed = build_parser().parse_args(args)
        try:
            return parsed.func(parsed)
        except OSError as e:  # e.g. the listen address is taken
            raise ConfigError(str(e)) from e

    return run_main(PROG, USAGE, sys.argv[1:] if argv is None else argv, run)
