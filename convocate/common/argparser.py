"""The argparse parser of every convocate command line, whose errors are raised, not printed.

Kept apart from :mod:`convocate.common.cli` so that ``help`` and ``version``, which
:func:`convocate.common.cli.run_main` answers itself, never import argparse (issue 17:
a command loads only what it needs).
"""

from __future__ import annotations

import argparse
from typing import NoReturn

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
