"""Command line of ``convocate``: the non-interactive client of the agents.

Every verb is a parser (here) and an adapter (``_cmd_*`` in :mod:`convocate.commands`) that
builds the call and prints the result; :func:`main` alone catches the project's error, prints it to
stderr and returns its exit code. With no arguments ``convocate`` opens the operator's TUI.

A command imports only what it needs (issue 17): this module imports nothing at the top but
:mod:`convocate.common.cli` and :mod:`convocate.lazyverbs`, so ``help`` and ``version`` load neither argparse
nor asyncio, asyncssh, docker, npyscreen or cryptography; the parser names each verb's adapter by name
(:class:`~convocate.lazyverbs.Lazy`),
loaded when that verb runs; ``ls`` and ``agents`` first ask status-serve's local socket
(:mod:`convocate.localstatus`, no asyncio) and go to the agents over SSH only for what it cannot answer.
``tests/test_startup_imports.py`` fails if that changes.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from convocate.common.cli import run_main, usage_line
from convocate.common.constants import STATUS_PORT
from convocate.lazyverbs import Lazy, OneVerb

if TYPE_CHECKING:
    import argparse

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
  move REF --to AGENT|auto [--dry-run] [--resume]
                                  move a session (home, recordings) to another agent; it runs on there
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

WAIT_STATES = ("waiting", "idle", "exited", "working", "crashed", "limited")


# --- parser ---------------------------------------------------------------------------
def _add_limits(p: argparse.ArgumentParser) -> None:
    from convocate.common.model import DEFAULT_CREDENTIAL as DEFAULT_NAME

    p.add_argument("--port", type=int, help="published port: 0 none, -1 auto (lowest free >= 1001)")
    p.add_argument("--protocol", choices=["tcp", "udp"], help="port protocol [tcp]")
    p.add_argument("--dns", help="DNS name for the session (RFC 1123)")
    p.add_argument("--cpus", type=float, help="CPU limit in cores [agent default]")
    p.add_argument("--memory", type=int, help="memory limit in MiB [agent default]")
    p.add_argument("--credential", type=_session_credential,
                   help=f"cluster credential to start with ('' for the agent's {DEFAULT_NAME}) [{DEFAULT_NAME}]")


def _session_credential(value: str) -> str:
    import argparse

    from convocate.common.errors import BadRequest
    from convocate.common.model import validate_session_credential

    try:
        return validate_session_credential(value)
    except BadRequest as e:
        raise argparse.ArgumentTypeError(e.message.removeprefix('field "credential": ')) from None


#: Verbs whose parsers another module adds, by module (imported only when one of its verbs is asked for).
#: ``tests/test_startup.py`` checks each module adds exactly these.
MODULE_VERBS = {"convocate.replay": ("replay", "grep"), "convocate.fleet_cli": ("place", "drain", "undrain")}


def _add_auth(sub: OneVerb, common: argparse.ArgumentParser) -> None:
    """``convocate auth`` and its verbs (issue 15 item 2)."""
    import argparse
    from pathlib import Path

    from convocate.common.model import DEFAULT_CREDENTIAL as DEFAULT_NAME

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
    p.set_defaults(func=Lazy("_cmd_auth_set", module="convocate.authverbs"))
    p = auth_sub.add_parser("push", parents=[common], help="send the stored credentials to every agent again")
    p.add_argument("--name", help="only this credential [all]")
    p.set_defaults(func=Lazy("_cmd_auth_push", module="convocate.authverbs"))
    p = auth_sub.add_parser("status", parents=[common], help="which agent holds which credential")
    p.set_defaults(func=Lazy("_cmd_auth_status", module="convocate.authverbs"))
    p = auth_sub.add_parser("rm", parents=[common], help="remove a credential everywhere")
    p.add_argument("name")
    p.set_defaults(func=Lazy("_cmd_auth_rm", module="convocate.authverbs"))


def _add_listing_verbs(sub: OneVerb, common: argparse.ArgumentParser) -> None:
    """``ls``, ``agents``, ``whoami`` and ``events``: what the cluster holds, and what happens in it."""
    p = sub.add_parser("ls", parents=[common], help="list sessions")
    p.add_argument("--waiting", action="store_true", help="only sessions waiting for the operator, with their question")
    p.add_argument("--wide", action="store_true",
                   help="also each session's image and the Claude Code version its container runs")
    p.set_defaults(read=Lazy("ls", module="convocate.readverbs"))
    p = sub.add_parser("agents", parents=[common], help="list agents")
    p.set_defaults(read=Lazy("agents", module="convocate.readverbs"))
    p = sub.add_parser("whoami", parents=[common], help="who each agent takes you for")
    p.set_defaults(func=Lazy("_cmd_whoami"))

    p = sub.add_parser("events", parents=[common], help="stream events")
    p.set_defaults(func=Lazy("_cmd_events", module="convocate.localverbs"), local=True)


def _add_shell_host_verbs(sub: OneVerb, common: argparse.ArgumentParser) -> None:
    """``status-serve``, ``image-status`` and ``install``: the verbs that run on and set up this shell host."""
    import argparse
    import os
    from pathlib import Path

    p = sub.add_parser("status-serve", parents=[common], help="run the status listener")
    p.add_argument("--listen", default=f":{STATUS_PORT}", help="SSH listen address HOST:PORT [%(default)s]")
    p.add_argument("--domain", help="cluster DNS domain [/etc/convocate/domain, else convocate.internal]")
    p.add_argument("--dnsmasq-pid-file", type=lambda v: Path(v) if v else None,
                   default=Path("/run/dnsmasq/dnsmasq.pid"),
                   help="dnsmasq PID file, signalled when the hosts file changes; '' never signals [%(default)s]")
    p.add_argument("--log-level", default=os.environ.get("CONVOCATE_LOG_LEVEL", "info"),
                   choices=["debug", "info", "warning", "error"], help="log verbosity [%(default)s]")
    p.set_defaults(func=Lazy("_cmd_status_serve", module="convocate.localverbs"), daemon=True)

    p = sub.add_parser("image-status", parents=[common], help="is the session image built",
                       description="Say whether this shell host's session image is built, being built, or why "
                       "not, and how to build it; exit 78 until it is built.")
    p.set_defaults(func=Lazy("_cmd_image_status", module="convocate.localverbs"), local=True)

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
    p.add_argument("--status-port", help=f"port of the status listener [keep the current one, else {STATUS_PORT}]")
    p.set_defaults(func=Lazy("_cmd_install", module="convocate.localverbs"), local=True)


def _add_session_verbs(sub: OneVerb, common: argparse.ArgumentParser) -> None:
    """``new``, ``attach``, the one-word ops (``kill`` ... ``override``), ``clone`` and ``edit``."""
    p = sub.add_parser("new", parents=[common], help="create a session")
    p.add_argument("name")
    p.add_argument("--agent", help="agent ID [placement: the agent with the most headroom that admits it]")
    _add_limits(p)
    p.add_argument("--no-start", action="store_true", help="create without starting")
    p.add_argument("--attach", action="store_true", help="attach right after starting")
    p.set_defaults(func=Lazy("_cmd_new"))

    p = sub.add_parser("attach", parents=[common], help="attach to a session")
    p.add_argument("ref")
    p.add_argument("--read-only", action="store_true", help="observe without typing")
    p.add_argument("--no-start", action="store_true", help="fail instead of starting a stopped session")
    p.set_defaults(func=Lazy("_cmd_attach"))

    for op, verb in (("kill", "killed"), ("restart", "restarted"), ("delete", "deleted"),
                     ("background", "backgrounded"), ("override", "override")):
        p = sub.add_parser(op, parents=[common], help=f"{op} a session")
        p.add_argument("ref")
        p.set_defaults(func=Lazy("_simple", op, verb))

    p = sub.add_parser("clone", parents=[common], help="clone a session")
    p.add_argument("ref")
    p.add_argument("name")
    p.set_defaults(func=Lazy("_cmd_clone"))

    p = sub.add_parser("edit", parents=[common], help="edit a session")
    p.add_argument("ref")
    p.add_argument("--name", help="new name")
    _add_limits(p)
    p.set_defaults(func=Lazy("_cmd_edit"))


def _add_typing_verbs(sub: OneVerb, common: argparse.ArgumentParser) -> None:
    """``send``, ``reply``, ``logs`` and ``wait``: typing into a session and watching what it does."""
    p = sub.add_parser("send", parents=[common], help="type text into a session")
    p.add_argument("ref")
    p.add_argument("text", nargs="+")
    p.add_argument("--no-enter", action="store_true", help="do not press Enter after the text")
    p.set_defaults(func=Lazy("_cmd_send"))

    p = sub.add_parser("reply", parents=[common], help="answer a session waiting for the operator",
                       description="Type TEXT (or stdin, for -) into a session that waits for the operator, "
                       "then Enter, as send does; refused (exit 4) when the session is not waiting.")
    p.add_argument("ref")
    p.add_argument("text", nargs="+", help="the answer; - reads it from stdin")
    p.add_argument("--force", action="store_true", help="type it even when the session is not waiting")
    p.add_argument("--wait", action="store_true", help="return once the session has left waiting")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="with --wait: give up after S seconds (exit 124) [%(default)s]")
    p.set_defaults(func=Lazy("_cmd_reply"))

    p = sub.add_parser("logs", parents=[common], help="show a session's logs")
    p.add_argument("ref")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.add_argument("--lines", type=int, default=200, help="how many of the last lines [%(default)s]")
    p.set_defaults(func=Lazy("_cmd_logs"))

    p = sub.add_parser("wait", parents=[common], help="wait for a session's activity")
    p.add_argument("ref")
    p.add_argument("--for", dest="state", required=True, choices=WAIT_STATES)
    p.add_argument("--timeout", type=float, default=0.0, help="give up after S seconds (exit 124) [no limit]")
    p.set_defaults(func=Lazy("_cmd_wait"))


def _add_trash_and_audit_verbs(sub: OneVerb, common: argparse.ArgumentParser) -> None:
    """``trash``, ``restore``, ``audit`` and ``capture``."""
    from pathlib import Path

    p = sub.add_parser("trash", parents=[common], help="list deleted sessions")
    p.set_defaults(func=Lazy("_cmd_trash"))
    p = sub.add_parser("restore", parents=[common], help="restore a deleted session")
    p.add_argument("trash_id")
    p.set_defaults(func=Lazy("_cmd_restore"))

    p = sub.add_parser("audit", parents=[common], help="the agents' audit trails; --verify checks them")
    p.add_argument("--session", help="only records about this session (UUID, prefix or name)")
    p.add_argument("--operator", help="only this verified operator (name or SHA256: fingerprint)")
    p.add_argument("--since", help="records at or after this RFC 3339 time")
    p.add_argument("--until", help="records at or before this RFC 3339 time")
    p.add_argument("--agent", help="only this agent")
    p.add_argument("--verify", action="store_true", help="check each chain's seq and prev; exit 1 if broken")
    p.add_argument("--file", type=Path, help="read this audit file (- for stdin) instead of the agents")
    p.set_defaults(func=Lazy("_cmd_audit", module="convocate.localverbs"), local=True)

    p = sub.add_parser("capture", parents=[common], help="print a session's screen")
    p.add_argument("ref")
    p.add_argument("--lines", type=int, default=0, help="also include N lines of history")
    p.set_defaults(func=Lazy("_cmd_capture"))


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``convocate`` parser with its help texts (man page, completion and tests read it).

    Loads argparse and the validators the options need, never the verbs' work (:class:`Lazy`).
    The verbs are added in the order ``convocate help`` lists them (an unknown verb's error does too).

    Args:
        only: Add this verb alone (what ``main`` does: a command line runs one); None: every verb.
            A word that is no verb gets the whole parser, whose error then lists every verb.
    """
    import importlib

    from convocate.common.argparser import ArgumentParser

    common = ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print the result as JSON")
    parser = ArgumentParser(prog=PROG, usage=usage_line(USAGE), add_help=False)
    action = parser.add_subparsers(dest="command", prog=PROG)
    sub = OneVerb(action, only)
    for add in (_add_listing_verbs, _add_shell_host_verbs, _add_session_verbs, _add_typing_verbs):
        add(sub, common)
    if sub.wants("auth"):
        _add_auth(sub, common)
    _add_trash_and_audit_verbs(sub, common)
    for module, verbs in MODULE_VERBS.items():  # replay and grep (issue 19); place, drain, undrain (issue 18)
        if sub.wants(*verbs):
            importlib.import_module(module).add_parsers(sub, common)
    p = sub.add_parser("move", parents=[common], help="move a session to another agent (issue 18)")
    p.add_argument("ref")
    p.add_argument("--to", help="target agent ID, or auto (placement)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and do nothing")
    p.add_argument("--resume", action="store_true", help="finish or roll back an interrupted move of the session")
    p.set_defaults(func=Lazy("_cmd_move"))
    if only is not None and only not in action.choices:
        return build_parser()
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``convocate`` command line; returns the exit status."""

    def run(args: list[str]) -> int:
        if not args:
            from convocate.common.paths import Paths
            from convocate.tui.app import run_tui

            return run_tui(Paths.from_env())
        if args[0] == "-c":  # invoked as a login shell with a command (ssh claude@shell CMD, scp, ...)
            from convocate.common.errors import BadRequest

            raise BadRequest("this account runs the convocate TUI and does not run commands; "
                             "log in without a command, or use the convocate CLI from your own account")
        parsed = build_parser(args[0]).parse_args(args)
        if getattr(parsed, "daemon", False):
            try:
                return parsed.func(parsed)
            except OSError as e:  # e.g. the listen address is taken
                from convocate.common.errors import ConfigError

                raise ConfigError(str(e)) from e
        read = getattr(parsed, "read", None)
        if read is not None:  # ls, agents: status-serve's copy where it is current, SSH for the rest
            return read(parsed)
        import asyncio

        if getattr(parsed, "local", False):
            return asyncio.run(parsed.func(parsed))
        from convocate.commands import _run

        return asyncio.run(_run(parsed))

    return run_main(PROG, USAGE, sys.argv[1:] if argv is None else argv, run, help_when_empty=False)


def __getattr__(name: str) -> Any:
    """The verbs' work moved to :mod:`convocate.commands` (issue 17); ``convocate.cli.X`` still finds it."""
    if name.startswith("__"):
        raise AttributeError(name)
    from convocate import commands

    try:
        return getattr(commands, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
