"""Command line of ``convocate-host``, the deploy tool (DESIGN §6).

This version has ``version`` and ``help``. The provisioning subcommands
(install, init-shell, init-agent, update, migrate-session, create-vm) are
named here so operators see what is coming, and answer with a clear
"not implemented in this version" instead of pretending.
"""

from __future__ import annotations

import sys

from convocate.common.cli import run_main
from convocate.common.errors import BadRequest, ConvocateError
from convocate.common.version import __version__

PROG = "convocate-host"

PLANNED = ("install", "init-shell", "init-agent", "update", "migrate-session", "create-vm")

USAGE = f"""\
usage: {PROG} <command> [options]

Provision convocate shell and agent hosts, locally or over SSH.

commands:
  install          prepare a vanilla Debian/Ubuntu host            (not implemented yet)
  init-shell       set up the shell host (status listener, CA)      (not implemented yet)
  init-agent       register and configure an agent host             (not implemented yet)
  update           roll a new package and image to a host           (not implemented yet)
  migrate-session  move an orphan session directory to an agent     (not implemented yet)
  create-vm        boot a new VM on a KVM hypervisor                (not implemented yet)
  version          print the version
  help             print this help
"""


class NotImplementedYet(ConvocateError):
    """A planned subcommand this version does not have."""

    code = "not_implemented"
    exit_code = 69  # EX_UNAVAILABLE


def main(argv: list[str] | None = None) -> int:
    """Run the ``convocate-host`` command line; returns the exit status."""

    def run(args: list[str]) -> int:
        if args[0] in PLANNED:
            raise NotImplementedYet(f"'{args[0]}' is not implemented in version {__version__}")
        raise BadRequest(f"unknown command {args[0]!r}; see '{PROG} help'")

    return run_main(PROG, USAGE, sys.argv[1:] if argv is None else argv, run)
