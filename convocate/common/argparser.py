"""The argparse parser of every convocate command line, whose errors are raised, not printed.

Kept apart from :mod:`convocate.common.cli` so that ``help`` and ``version``, which
:func:`convocate.common.cli.run_main` answers itself, never import argparse (issue 17:
a command loads only what it needs).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

from convocate.common.errors import UsageError


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose errors are raised as :class:`UsageError`, not printed.

    argparse's own ``error`` prints the usage and exits 2; raising lets :func:`run_main`
    print it once, in text or as JSON. Subparsers made with ``add_subparsers`` are of
    this class too (argparse uses the parent's class).
    """

    def error(self, message: str) -> NoReturn:
        """Raise the error of a bad command line.

        Raises:
            UsageError: always, with argparse's message and this parser's usage line.
        """
        raise UsageError(message, self.format_usage())


def verb_parser(prog: str, usage_line: str,
                adders: Iterable[Callable[[Any], None]]) -> tuple[ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """A role's command line: one parser whose verbs (``dest="command"``) the adders add, in order.

    Args:
        prog: The program's name (``convocate-agent``).
        usage_line: Its usage, without the ``usage:`` prefix argparse adds.
        adders: Each adds one verb or a group of them to the subparsers action it is given.

    Returns:
        The parser, and its verbs' parsers by name (for options every verb takes).
    """
    parser = ArgumentParser(prog=prog, usage=usage_line, add_help=False)
    verbs = parser.add_subparsers(dest="command", prog=prog)
    for add in adders:
        add(verbs)
    return parser, verbs.choices
