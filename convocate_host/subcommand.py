"""Building ``convocate-host`` subcommands (argparse): every command's parser is made the same way.

A subcommand is its name, a one-line summary, a description, its own arguments in ``--help`` order
and, for commands that reach a host, the SSH options of :func:`convocate_host.opentarget.add_ssh_options`;
:func:`add_subcommand` builds it from that list, so the commands only declare their arguments.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from convocate_host.opentarget import add_ssh_options

#: One argument of a subcommand: ``add_argument``'s flags and keywords, or a function that adds a group.
Argument = tuple[tuple[str, ...], dict[str, Any]] | Callable[[argparse.ArgumentParser], None]


def arg(*flags: str, **kwargs: Any) -> Argument:
    """One argument for :func:`add_subcommand`: the flags and keywords ``add_argument`` takes."""
    return flags, kwargs


def add_subcommand(sub: argparse._SubParsersAction, name: str, summary: str, description: str,
                   func: Callable[[argparse.Namespace], int], arguments: Sequence[Argument], *,
                   ssh: bool = True) -> argparse.ArgumentParser:
    """Add subcommand ``name``: its ``arguments`` in order, then the SSH options (``ssh``) and ``func``.

    Args:
        sub: The top-level parser's subparsers.
        name: The command word.
        summary: The one-line ``help`` in the command list.
        description: The paragraph of ``NAME --help``.
        func: The adapter ``main`` calls with the parsed arguments.
        arguments: The command's own arguments, in ``--help`` order.
        ssh: Whether to add :func:`convocate_host.opentarget.add_ssh_options` (``--host`` commands).

    Returns:
        The subcommand's parser.
    """
    p = sub.add_parser(name, help=summary, description=description)
    for argument in arguments:
        if callable(argument):
            argument(p)
        else:
            flags, kwargs = argument
            p.add_argument(*flags, **kwargs)
    if ssh:
        add_ssh_options(p)
    p.set_defaults(func=func)
    return p
