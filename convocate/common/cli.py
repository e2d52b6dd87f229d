"""What every convocate command line does the same way: help, version, errors, exit codes.

Each role's ``main`` hands its parsing and work to :func:`run_main`, which
answers ``help``/``--help``/``-h`` and ``version``/``--version`` itself and is
the one place that turns a :class:`ConvocateError` into a message and the
error's exit code (pipx's ``cli()`` does the same): on stderr as
``prog: message``, or with ``--json`` on the command line as one JSON object
on stdout, ``{"ok": false, "code": ..., "error": ...}``, with the same exit
status either way. Parsers are built from :class:`ArgumentParser`, whose
errors become a :class:`UsageError` here instead of argparse's own print and
exit, so a bad command line prints one ``usage:`` line.
"""

from __future__ import annotations

import grp
import os
import pwd
import sys
from typing import TYPE_CHECKING, Any

from convocate.common import messages
from convocate.common.errors import ConvocateError, InternalError, NoPermission, UsageError
from convocate.common.version import __version__

if TYPE_CHECKING:
    from collections.abc import Callable

# help and version import nothing more than this module needs for them: argparse
# (convocate.common.argparser), json, traceback and pathlib are loaded where they are used.

HELP_WORDS = ("help", "--help", "-h")
VERSION_WORDS = ("version", "--version")
JSON_FLAG = "--json"
#: Exit status after Ctrl-C (128 + SIGINT), as a shell reports it.
EXIT_INTERRUPTED = 130


def __getattr__(name: str) -> Any:
    """``ArgumentParser`` from :mod:`convocate.common.argparser`, imported on first use (PEP 562)."""
    if name == "ArgumentParser":
        from convocate.common.argparser import ArgumentParser

        return ArgumentParser
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def usage_line(usage: str) -> str:
    """The first line of a help text without its ``usage:`` prefix, for ``ArgumentParser(usage=...)``.

    argparse prefixes ``usage: `` itself; handing it the whole help text printed that
    text (and ``usage: usage:``) on every error.
    """
    return usage.splitlines()[0].removeprefix("usage: ")


def wants_json(argv: list[str]) -> bool:
    """Whether ``--json`` is among the options (not after a ``--`` that ends them)."""
    options = argv[:argv.index("--")] if "--" in argv else argv
    return JSON_FLAG in options


def _owner_names(st: os.stat_result) -> tuple[str, str]:
    try:
        user = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        user = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return user, group


def no_permission(error: PermissionError, action: str = "reading") -> NoPermission:
    """Say which account or group may do what ``error`` refused.

    The path in the way is the deepest one this account can still ``stat`` on the way up
    from ``error.filename`` (a directory it may not search hides everything below it); its
    owner and group are the account and group that may (POSIX permission bits).

    Args:
        error: The refusal (``EACCES``/``EPERM``) with the path it was about.
        action: What was being done, for the message (``reading``, ``writing``, ``using``).

    Returns:
        The error to raise, naming the path, the account and the group.
    """
    from pathlib import Path

    if not error.filename:
        return NoPermission(messages.NO_PERMISSION_UNKNOWN.format(action=action, detail=error.strerror or error))
    path = Path(os.fsdecode(error.filename))
    blocker = None
    for candidate in (path, *path.parents):
        try:
            blocker = candidate.stat()
            break
        except OSError:
            continue
    try:
        me = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        me = str(os.geteuid())
    if blocker is None:
        return NoPermission(messages.NO_PERMISSION_UNKNOWN.format(action=f"{action} {path}",
                                                                   detail=error.strerror or error))
    user, group = _owner_names(blocker)
    if user == "root" and group == "root":
        return NoPermission(messages.NO_PERMISSION_ROOT.format(action=action, path=path))
    return NoPermission(messages.NO_PERMISSION.format(action=action, path=path, user=user, group=group, me=me))


def _report(prog: str, error: ConvocateError, as_json: bool) -> int:
    import json

    if as_json:
        print(json.dumps({"ok": False, "code": error.code, "error": error.message}, ensure_ascii=False), flush=True)
    else:
        if isinstance(error, UsageError) and error.usage:
            sys.stderr.write(error.usage if error.usage.endswith("\n") else error.usage + "\n")
            print(f"{prog}: error: {error}; see '{prog} help'", file=sys.stderr)
        else:
            print(f"{prog}: {error}", file=sys.stderr)
    return error.exit_code


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
        The exit status: 0 for help and version, ``run``'s status, or the exit code of the
        :class:`ConvocateError` it raised (2 for a bad command line, 77 for a permission
        refused, 70 for an unexpected exception, 130 on Ctrl-C). With ``--json`` the error
        goes to stdout as ``{"ok": false, "code", "error"}``; the status is the same.
    """
    if (not argv and help_when_empty) or (argv and argv[0] in HELP_WORDS):
        sys.stdout.write(usage)
        return 0
    if argv and argv[0] in VERSION_WORDS:
        print(f"{prog} version v{__version__}")
        return 0
    as_json = wants_json(argv)
    try:
        return run(argv)
    except ConvocateError as e:
        return _report(prog, e, as_json)
    except PermissionError as e:  # a file of /etc/convocate*, say, that this account may not use
        return _report(prog, no_permission(e, "using"), as_json)
    except KeyboardInterrupt:
        if as_json:
            import json

            print(json.dumps({"ok": False, "code": "interrupted", "error": "interrupted"}), flush=True)
        return EXIT_INTERRUPTED
    except Exception as e:  # a bug: keep the traceback for the report, exit EX_SOFTWARE in both modes
        import traceback

        traceback.print_exc()
        return _report(prog, InternalError(messages.INTERNAL_ERROR.format(prog=prog, error=f"{type(e).__name__}: {e}")),
                       as_json)
