"""Command line of ``convocate-host``, the operator's deploy tool (DESIGN §6).

Parsers (``_add_*``) build the arguments, adapters (``_cmd_*``) turn them into targets and
options and call the logic modules; only :func:`main` (through ``run_main``) turns the project's
errors into a message and an exit code.

Without ``--host`` a command works on this machine (as root, through ``sudo -n`` when needed);
with ``--host H`` it logs in to H over SSH as ``--user`` with the operator's keys and
``known_hosts`` and uses ``sudo -n`` there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from convocate.common.argparser import verb_parser
from convocate.common.cli import run_main, usage_line
from convocate.common.constants import AGENT_PORT, STATUS_PORT
from convocate.common.errors import BadRequest
from convocate.common.paths import Paths
from convocate.common.version import __version__
from convocate_host import operator_ca, vm
from convocate_host import report as reports
from convocate_host.agenthost import AgentOptions, each_agent, init_agent, update_host
from convocate_host.migrate import migrate_session
from convocate_host.opentarget import open_target
from convocate_host.prepare import PrepareOptions, prepare
from convocate_host.report import LiveReport, report_for
from convocate_host.rsyslog import FIRST_PORT as LOG_PORT
from convocate_host.rsyslog import PORT_COUNT
from convocate_host.shellhost import ShellOptions, init_shell
from convocate_host.subcommand import add_subcommand, arg
from convocate_host.target import Target

PROG = "convocate-host"

USAGE = f"""\
usage: {PROG} <command> [options]

Provision convocate shell and agent hosts, here (sudo) or over SSH (--host).
Every command is idempotent and prints what it changed.

commands:
  install          prepare a vanilla Debian/Ubuntu host (packages, Docker, user claude, UTC, ufw)
  init-shell       install and set up the shell host (status listener, log CA and TLS listener)
  init-agent       install an agent host and join it to the shell host (keys, pins, logs, image)
  update           roll new packages and the session image to a host, or to every agent (--all);
                   --claude-code VERSION rolls a new Claude Code without new packages
  migrate-session  move an orphan session directory from the shell host to an agent
  operator-cert    sign an operator's SSH public key into a certificate naming them (root, shell host)
  create-vm        boot a new VM on a KVM hypervisor (libvirt, cloud-init)
  version          print the version
  help             print this help

Every command takes --dry-run (say what would change, change nothing) and --json (the
report, or the error, as JSON on stdout).
Run '{PROG} <command> --help' for a command's options.
"""

async def _target(args: argparse.Namespace, host: str | None) -> Target:
    return await open_target(args, host, local_address=getattr(args, "local_address", None))


def _run(coro: Callable[[], Awaitable[int]]) -> int:
    return asyncio.run(coro())


def _on_host(args: argparse.Namespace, host: str | None, command: str,
             work: Callable[[Target, LiveReport], Awaitable[Target | None]]) -> int:
    """Run ``work`` on one target with its report; ``work`` may hand back a new target (after a reboot)."""
    async def run() -> int:
        target = await _target(args, host)
        report = report_for(target)
        try:
            target = await work(target, report) or target
        finally:
            await target.close()
        report.finish(command)
        return 0

    return _run(run)


_DEBS = arg("--debs", type=Path, default=Path("."), help="directory with the .debs [%(default)s]")
_SHELL_HOST = arg("--shell-host", help="the shell host [this machine]")
_STATUS_PORT = arg("--status-port", type=int, default=STATUS_PORT, help="status listener port [%(default)s]")


# --- install ---------------------------------------------------------------------------------------
def _add_install(sub: argparse._SubParsersAction) -> None:
    add_subcommand(sub, "install", "prepare a vanilla host",
                    "Prepare a vanilla Debian 12 / Ubuntu host: apt upgrade, base packages, user claude (UID 1337), "
                    "UTC, ufw (22 and the role's ports). A remote host is rebooted and waited for when a new kernel "
                    "needs it; this machine never is.", _cmd_install, [
                        arg("--host", help="the host to prepare [this machine]"),
                        arg("--role", choices=["agent", "shell", "both"], default="agent",
                             help="which ports the firewall opens: agent 222, shell 223 and 6514:6769 [%(default)s]"),
                        arg("--no-upgrade", action="store_true", help="skip apt-get dist-upgrade"),
                        arg("--no-firewall", action="store_true", help="leave ufw alone"),
                        arg("--no-reboot", action="store_true", help="never reboot; say when a reboot is due"),
                    ])


def _cmd_install(args: argparse.Namespace) -> int:
    roles = ("agent", "shell") if args.role == "both" else (args.role,)
    options = PrepareOptions(roles=roles, upgrade=not args.no_upgrade, firewall=not args.no_firewall,
                             reboot=not args.no_reboot)

    return _on_host(args, args.host, "install", lambda target, report: prepare(
        target, options, report, reconnect=lambda: _target(args, args.host)))


# --- init-shell ------------------------------------------------------------------------------------
def _add_init_shell(sub: argparse._SubParsersAction) -> None:
    add_subcommand(sub, "init-shell", "set up the shell host",
                    "Install the convocate package on the shell host and set up the status listener (tcp/223), the "
                    "log CA and what the agents' TLS log listeners share (one port each, from tcp/6514, opened in "
                    "ufw as a range).", _cmd_init_shell, [
                        arg("--host", help="the shell host [this machine]"),
                        _DEBS,
                        arg("--no-image", action="store_true", help="do not build the session image now"),
                        arg("--base-image", default="", help="local base image for the session image [debootstrap]"),
                        arg("--domain", default="convocate.internal", help="the cluster's DNS domain [%(default)s]"),
                        _STATUS_PORT,
                        arg("--log-port", type=int, default=LOG_PORT,
                             help=f"first of the {PORT_COUNT} TLS log ports, one per agent [%(default)s]"),
                        arg("--name", action="append", default=[], dest="names",
                             help="another name or address agents reach the shell host by (its TLS certificate "
                             "names it); repeatable"),
                        arg("--local-address", help="how agents reach this machine, in local mode [its host name]"),
                    ])


def _cmd_init_shell(args: argparse.Namespace) -> int:
    options = ShellOptions(debs=args.debs, build_image=not args.no_image, base_image=args.base_image,
                           domain=args.domain, status_port=args.status_port, names=tuple(args.names),
                           log_port=args.log_port)

    return _on_host(args, args.host, "init-shell", lambda shell, report: init_shell(shell, options, report))


# --- init-agent ------------------------------------------------------------------------------------
def _add_init_agent(sub: argparse._SubParsersAction) -> None:
    add_subcommand(sub, "init-agent", "set up an agent host",
                    "Install the convocate-agent package on an agent host and join it to the shell host: peering "
                    "keys, host keys pinned both ways, registration, log forwarding over TLS, the session image.",
                    _cmd_init_agent, [
                        arg("--host", required=True, help="the agent host"),
                        _SHELL_HOST,
                        _DEBS,
                        arg("--image", default=f"convocate:{__version__}", help="session image tag [%(default)s]"),
                        arg("--address", help="how the shell host reaches the agent [--host]"),
                        arg("--shell-address", help="how the agent reaches the shell host [--shell-host, else "
                             "this machine's host name]"),
                        arg("--listen-port", type=int, default=AGENT_PORT, help="the agent's SSH port [%(default)s]"),
                        arg("--status-port", type=int, default=STATUS_PORT,
                             help="the shell's status port [%(default)s]"),
                        arg("--log-port", type=int, default=LOG_PORT,
                             help="first of the shell's TLS log ports, as given to init-shell; the agent gets its "
                             "own [%(default)s]"),
                        arg("--docker-path-prefix", default="",
                             help="where the agent host's files appear to its dockerd, for an agent in a container "
                             "that drives its host's dockerd [none]"),
                    ])


def _cmd_init_agent(args: argparse.Namespace) -> int:
    async def run() -> int:
        shell = await _target(args, args.shell_host)
        try:
            agent = await _target(args, args.host)
        except BaseException:
            await shell.close()
            raise
        shell_report, agent_report = report_for(shell), report_for(agent)
        options = AgentOptions(debs=args.debs, image=args.image, shell_address=args.shell_address or shell.address,
                               agent_address=args.address or args.host, listen_port=args.listen_port,
                               status_port=args.status_port, log_port=args.log_port,
                               docker_path_prefix=args.docker_path_prefix)
        try:
            await init_agent(shell, agent, options, shell_report, agent_report)
        finally:
            await agent.close()
            await shell.close()
        shell_report.finish("init-agent")
        agent_report.finish("init-agent")
        return 0

    return _run(run)


# --- update ----------------------------------------------------------------------------------------
def _add_update(sub: argparse._SubParsersAction) -> None:
    def host_or_all(p: argparse.ArgumentParser) -> None:
        target = p.add_mutually_exclusive_group(required=True)
        target.add_argument("--host", help="the host to update")
        target.add_argument("--all", action="store_true", help="every agent registered on the shell host")

    add_subcommand(sub, "update", "roll new packages and image",
                    "Install the newest .debs of the convocate packages a host has and, on an agent host, send the "
                    "new session image and make it current. Running sessions keep their image until they are "
                    "restarted. --all updates every registered agent in turn and stops at the first that does not "
                    "come back healthy.", _cmd_update, [
                        host_or_all,
                        arg("--drain", action="store_true",
                             help="with --all: drain each agent before updating it (`convocate drain`: its sessions "
                             "move to the agents placement picks) and undrain it once it is healthy; stops at an "
                             "agent whose sessions cannot all move"),
                        arg("--shell-host", help="the shell host (image source, health checks) [this machine]"),
                        _DEBS,
                        arg("--image", help="session image tag [convocate:<new agent version>; with --claude-code: "
                             "the tag to build, convocate:<shell's convocate version>-cc<VERSION>]"),
                        arg("--claude-code", metavar="VERSION",
                             help="roll this Claude Code version (X.Y.Z, or latest: the npm registry's newest) "
                             "without new packages: the shell host builds the image with it, each agent gets it as "
                             "its current image; --debs is not used"),
                        arg("--registry", help="npm registry asked for --claude-code latest [$NPM_CONFIG_REGISTRY, "
                             "else https://registry.npmjs.org]"),
                    ])


def _cmd_update_claude_code(args: argparse.Namespace) -> int:
    from convocate_host import claude_pin, claude_roll

    # "none" builds the tests' stand-in claude (build-image.sh --claude-code none).
    version = "none" if args.claude_code == "none" else claude_pin.resolve(args.claude_code, args.registry)

    async def update(shell: Target, shell_report: LiveReport) -> None:
        if args.claude_code == claude_pin.LATEST:
            shell_report.note(f"Claude Code latest is {version} (npm registry {claude_pin.registry_url(args.registry)})")
        tag = await claude_roll.build_image(shell, version, shell_report, tag=args.image)
        progress = None if args.json else sys.stderr

        async def roll(target: Target, report: LiveReport) -> None:
            await claude_roll.roll_to_agent(shell, target, tag, version, report, shell_report=shell_report,
                                            progress=None if target is shell else progress)

        done = await _on_update_targets(args, shell, shell_report, roll, "update --claude-code",
                                        "update --claude-code")
        if args.all and not args.json:
            print(f"rolled Claude Code {version} ({tag}) to {len(done)} agent(s): {', '.join(done)}")

    return _on_host(args, args.shell_host, "update --claude-code", update)


async def _on_update_targets(args: argparse.Namespace, shell: Target, shell_report: LiveReport,
                             step: Callable[[Target, LiveReport], Awaitable[object]], what: str,
                             stopped: str) -> list[str]:
    """Run ``step`` where ``update`` goes: every registered agent in turn (``--all``), the shell host
    itself (``--host`` naming it), or one other host.

    ``what`` labels each host's closing report line, ``stopped`` the error of an ``--all`` that
    stopped at an agent.

    Returns:
        The agent IDs done with ``--all``, else ``[]``.

    Raises:
        BadRequest, HostError: as :func:`convocate_host.agenthost.each_agent` and ``step``.
    """
    if args.all:
        return await each_agent(shell, lambda address: _target(args, address), report_for, step, stopped,
                                finish=what, drain=args.drain)
    if args.host == args.shell_host:
        await step(shell, shell_report)
        return []
    host = await _target(args, args.host)
    report = report_for(host)
    try:
        await step(host, report)
    finally:
        await host.close()
    report.finish(what)
    return []


def _cmd_update(args: argparse.Namespace) -> int:
    if args.drain and not args.all:
        raise BadRequest("--drain needs --all (it moves an agent's sessions to the other agents)")
    if args.claude_code:
        return _cmd_update_claude_code(args)

    async def update(shell: Target, shell_report: LiveReport) -> None:
        done = await _on_update_targets(
            args, shell, shell_report,
            lambda target, report: update_host(shell, target, args.debs, report, image=args.image,
                                               shell_report=shell_report), "update", "update --all")
        if args.all and not args.json:
            print(f"updated {len(done)} agent(s): {', '.join(done)}")

    return _on_host(args, args.shell_host, "update", update)


# --- migrate-session -------------------------------------------------------------------------------
def _add_migrate(sub: argparse._SubParsersAction) -> None:
    add_subcommand(sub, "migrate-session", "move an orphan session to an agent",
                    "Move an orphan session directory (/home/claude/<uuid> on the shell host, claimed by no agent) "
                    "to an agent, verified entry by entry; the shell's copy is kept in /home/claude/.migrated/.",
                    _cmd_migrate, [
                        arg("--agent", required=True, help="agent ID (as registered on the shell host)"),
                        arg("--session", required=True, help="the session UUID"),
                        _SHELL_HOST,
                    ])


def _cmd_migrate(args: argparse.Namespace) -> int:
    from convocate_host.agenthost import registered_agents

    async def migrate(shell: Target, shell_report: LiveReport) -> None:
        addresses = dict(await registered_agents(shell))
        if args.agent not in addresses:
            raise BadRequest(f"agent {args.agent!r} is not registered on {shell.description} "
                             f"(registered: {', '.join(sorted(addresses)) or 'none'})")
        agent = await _target(args, addresses[args.agent])
        report = report_for(agent)
        try:
            await migrate_session(shell, agent, args.session, args.agent, report, shell_report)
        finally:
            await agent.close()
        report.finish("migrate-session")

    return _on_host(args, args.shell_host, "migrate-session", migrate)


# --- operator-cert ---------------------------------------------------------------------------------
def _add_operator_cert(sub: argparse._SubParsersAction) -> None:
    add_subcommand(sub, "operator-cert", "issue an operator certificate",
                    "Sign an operator's own SSH public key with the cluster's operator CA (/etc/convocate/operator-ca, "
                    "root's) into an OpenSSH user certificate whose key ID and principal are NAME; the agents take "
                    "the operator's connections for NAME. Runs on the shell host as root.", _cmd_operator_cert, [
                        arg("--name", required=True,
                             help="the operator's name: 1-32 of a-z, 0-9, '.', '_', '-', starting with a letter"),
                        arg("pubkey", type=Path, metavar="PUBKEY_FILE",
                             help="the operator's public key (e.g. id_ed25519.pub)"),
                        arg("--valid-days", type=int, default=operator_ca.DEFAULT_VALID_DAYS,
                             help="days the certificate is valid [%(default)s]"),
                        arg("--out", type=Path, help="where to write it [KEY-cert.pub beside the key]"),
                    ], ssh=False)


def _cmd_operator_cert(args: argparse.Namespace) -> int:
    report = LiveReport("this host")
    if args.dry_run:
        report.note(f"would sign {args.pubkey} for {args.name} ({args.valid_days} days) with "
                    f"{Paths.from_env().operator_ca_key}")
    else:
        path, cert = operator_ca.issue_certificate(Paths.from_env(), args.name, args.pubkey, args.valid_days,
                                                   args.out)
        report.changed(operator_ca.describe(args.name, path, cert, args.valid_days))
    report.finish("operator-cert")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser, verbs = verb_parser(PROG, usage_line(USAGE), (_add_install, _add_init_shell, _add_init_agent, _add_update,
                                                          _add_migrate, _add_operator_cert, vm.add_parser))
    for p in verbs.values():
        p.add_argument("--json", action="store_true",
                       help="print the report (what changed, what was kept) as one JSON object on stdout, and "
                       "errors as {\"ok\": false, \"code\", \"error\"}")
        p.add_argument("--dry-run", action="store_true",
                       help="say what would change without changing anything: reads still happen; writes, "
                       "package installs, service restarts and reboots do not")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``convocate-host`` command line; returns the exit status."""

    def run(args: list[str]) -> int:
        parsed = build_parser().parse_args(args)
        if not getattr(parsed, "func", None):
            raise BadRequest(f"unknown command {args[0]!r}; see '{PROG} help'")
        reports.configure(json=parsed.json, dry_run=getattr(parsed, "dry_run", False))
        status = parsed.func(parsed)
        if parsed.json:
            print(json.dumps(reports.json_document(parsed.command), indent=2, ensure_ascii=False))
        return status

    return run_main(PROG, USAGE, sys.argv[1:] if argv is None else argv, run)
