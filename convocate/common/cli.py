"""What every convocate command line does the same way: help, version, errors, exit codes.

Each role's ``main`` hands its parsing and work to :func:`run_main`, which
answers ``help``/``--help``/``-h`` and ``version``/``--version`` itself and is
the one place that turns a :class:`ConvocateError` into a message on stderr
and the error's exit code (pipx's ``cli()`` does the same).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from convocate.common.errors import ConvocateError
from convocate.common.version import __version__

HELP_WORDS = ("help", "--help", "-h")
VERSION_WORDS = ("version", "--version")


def run_main(prog: str, usage: str, argv: list[str], run: Callable[[list[str]], int], *,
             help_when_empty: bool = True) -> int:
    """Run one command line.

    Args:
        prog: Program name, for messages (``convocate-agent``).
        usage: Text printed for help.
        argv: Arguments without the program name.
        run: Does the work for any other arguments; returns the exit status.
        help_when_empty: Print the usage when there are no arguments.

    Returns:
        The exit status: 0 for help and version, ``run``'s status, or the
        exit code of the :class:`ConvocateError` it raised (130 on Ctrl-C).
    """
    if (not argv and help_when_empty) or (argv and argv[0] in HELP_WORDS):
        sys.stdout.write(usage)
        return 0
    if argv and argv[0] in VERSION_WORDS:
        print(f"{prog} version v{__version__}")
        return 0
    try:
        return run(argv)
    except ConvocateError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
