"""Command line of ``convocate-host``, the deploy tool (DESIGN §6).

This version has ``version`` and ``help``. The provisioning subcommands
(install, init-shell, init-agent, update, migrate-session, create-vm) are
named here so operators see what is coming, and answer with a clear
"not implemented in this version" instead of pretending.
"""

from __future__ import annotations

import sys

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


def main(argv: list[str] | None = None) -> int:
    """Run the ``convocate-host`` command line; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("help", "--help", "-h"):
        sys.stdout.write(USAGE)
        return 0
    if argv[0] in ("version", "--version"):
        print(f"{PROG} version v{__version__}")
        return 0
    if argv[0] in PLANNED:
        print(f"{PROG}: '{argv[0]}' is not implemented in version {__version__}", file=sys.stderr)
        return 69  # EX_UNAVAILABLE
    print(f"{PROG}: unknown command {argv[0]!r}; see '{PROG} help'", file=sys.stderr)
    return 2
