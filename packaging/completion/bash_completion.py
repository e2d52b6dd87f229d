#!/usr/bin/env python3
"""Generate the bash completion scripts of convocate, convocate-agent and convocate-host.

    packaging/completion/bash_completion.py --out DIR [PROG...]

writes ``DIR/<prog>`` for each command (default: all three) from the command's own argparse
parser (``build_parser()`` of its ``cli`` module), so the completions cannot drift from the
command line: a new subcommand, option or choice is completable in the next build.
``debian/rules`` runs it at package build time and ``debian/<pkg>.install`` puts the result in
``/usr/share/bash-completion/completions/``, where bash-completion loads it on first use.

The scripts complete, with no process started (argcomplete would import the zipapp on every
Tab and add start-up cost to every run): the subcommands and the top level's ``--help`` and
``--version``; each subcommand's options; the choices of an option that has them; file names
after an option whose value is a path; nothing after any other option that takes a value. They
use only bash builtins (``compgen``, ``mapfile``), not bash-completion's helpers, so they also
work when sourced on their own.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

#: The module whose ``build_parser()`` each command's completion is generated from.
COMMANDS = {
    "convocate": "convocate.cli",
    "convocate-agent": "convocate_agent.cli",
    "convocate-host": "convocate_host.cli",
}
#: What may appear unquoted in a ``compgen -W`` word list or a ``case`` pattern.
WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:+-]*|--?[A-Za-z0-9][A-Za-z0-9_-]*")


@dataclass(frozen=True)
class Option:
    """One option of a subcommand, as the completion needs it.

    Attributes:
        strings: Its option strings (``-f``, ``--follow``).
        takes_value: Whether the next word is its value (not for a value that is optional).
        choices: The values it accepts, when argparse restricts them.
        path: Whether its value is a file name (``type=Path``).
    """

    strings: tuple[str, ...]
    takes_value: bool
    choices: tuple[str, ...] = ()
    path: bool = False


@dataclass(frozen=True)
class Subcommand:
    """One subcommand, its options in the parser's order, and its own subcommands (``convocate auth set``)."""

    name: str
    options: tuple[Option, ...]
    children: tuple[Subcommand, ...] = ()


def _words(values: object) -> tuple[str, ...]:
    words = tuple(str(v) for v in values)  # type: ignore[attr-defined]
    for word in words:
        if not WORD.fullmatch(word):
            raise ValueError(f"{word!r} cannot be completed without quoting")
    return words


def describe(parser: argparse.ArgumentParser) -> list[Subcommand]:
    """The subcommands of a top-level parser and their options.

    Args:
        parser: A parser whose subcommands are one ``add_subparsers`` action.

    Returns:
        The subcommands in the order they were added; aliases are not used by these CLIs.

    Raises:
        ValueError: A name, option string or choice would need quoting in the script.
    """
    subcommands = []
    for action in parser._actions:  # argparse has no public walk of a parser
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for name, sub in action.choices.items():
            options = tuple(
                # An optional value (nargs="?") is not offered for: such a flag is meant to stand alone.
                Option(strings=_words(a.option_strings), takes_value=a.nargs not in (0, "?"),
                       choices=_words(a.choices) if a.choices is not None else (),
                       path=a.type is Path)
                for a in sub._actions if a.option_strings)
            subcommands.append(Subcommand(name=_words([name])[0], options=options, children=tuple(describe(sub))))
    return subcommands


def top_level_words() -> tuple[str, ...]:
    """The words every command takes in place of a subcommand (``help``, ``--help``, ``-h``, ``version``, ``--version``)."""
    from convocate.common.cli import HELP_WORDS, VERSION_WORDS

    return _words((*HELP_WORDS, *VERSION_WORDS))


def function_name(prog: str) -> str:
    """The completion function of ``prog``: ``_convocate_agent`` for ``convocate-agent``."""
    return "_" + prog.replace("-", "_")


def render(prog: str, source: str, subcommands: list[Subcommand], top_words: tuple[str, ...]) -> str:
    """The completion script of one command.

    Args:
        prog: The command's name, as typed.
        source: Where its parser comes from (for the header).
        subcommands: From :func:`describe`.
        top_words: From :func:`top_level_words`.

    Returns:
        The script's text: a function ``_<prog>`` and the ``complete -F`` that binds it, with no
        ``#!`` line (lintian: bash-completion-with-hashbang).
    """
    top = sorted({s.name for s in subcommands} | set(top_words))
    out = [
        f"# bash completion for {prog}                                 -*- shell-script -*-",
        "#",
        f"# Generated by packaging/completion/bash_completion.py from {source}:build_parser",
        "# when the package was built; do not edit: change the parser, and the next build follows.",
        "",
        f"{function_name(prog)}()",
        "{",
        '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"',
        '    local command="" options="" i',
        "    COMPREPLY=()",
        "    # The subcommand is the first word that is not an option (the top level takes no values).",
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        '        if [[ ${COMP_WORDS[i]} != -* ]]; then',
        '            command="${COMP_WORDS[i]}"',
        "            break",
        "        fi",
        "    done",
        '    case "$command" in',
        '        "")',
        f'            mapfile -t COMPREPLY < <(compgen -W "{" ".join(top)}" -- "$cur")',
        "            return 0",
        "            ;;",
    ]
    for sub in subcommands:
        out += _subcommand_case(sub, "        ")
    out += [
        "        *)",
        "            return 0",
        "            ;;",
        "    esac",
        '    if [[ -z $cur || $cur == -* ]]; then',
        '        mapfile -t COMPREPLY < <(compgen -W "$options" -- "$cur")',
        "    fi",
        "    return 0",
        "} &&",
        f"    complete -F {function_name(prog)} {prog}",
        "",
        "# ex: filetype=sh",
        "",
    ]
    return "\n".join(out)


def _subcommand_case(sub: Subcommand, pad: str) -> list[str]:
    """The ``case`` branch of one subcommand: its options and their values, or its own subcommands."""
    out = [f"{pad}{sub.name})", f'{pad}    options="{" ".join(s for o in sub.options for s in o.strings)}"']
    if sub.children:
        # Its own subcommand is the first word after it that is not an option; before one, offer them.
        inner = pad + "    "
        out += [f'{inner}local sub="" j',
                f"{inner}for ((j = i + 1; j < COMP_CWORD; j++)); do",
                f'{inner}    if [[ ${{COMP_WORDS[j]}} != -* ]]; then sub="${{COMP_WORDS[j]}}"; break; fi',
                f"{inner}done",
                f'{inner}case "$sub" in',
                f'{inner}    "")',
                f"{inner}        if [[ $cur != -* ]]; then",
                f'{inner}            mapfile -t COMPREPLY < <(compgen -W "{" ".join(c.name for c in sub.children)}"'
                ' -- "$cur")',
                f"{inner}            return 0",
                f"{inner}        fi",
                f"{inner}        ;;"]
        for child in sub.children:
            out += _subcommand_case(child, inner + "    ")
        out += [f"{inner}    *)", f"{inner}        return 0", f"{inner}        ;;", f"{inner}esac", f"{pad}    ;;"]
        return out
    # After an option that takes a value: its choices, file names, or nothing (one branch per kind).
    branches: dict[tuple[str, ...], list[str]] = {}
    for option in (o for o in sub.options if o.takes_value):
        kind = ("choices", *option.choices) if option.choices else ("path",) if option.path else ("value",)
        branches.setdefault(kind, []).extend(option.strings)
    if branches:
        out.append(f'{pad}    case "$prev" in')
        for kind, strings in branches.items():
            out.append(f"{pad}        {'|'.join(strings)})")
            if kind[0] == "choices":
                out.append(f'{pad}            mapfile -t COMPREPLY < <(compgen -W "{" ".join(kind[1:])}"'
                           ' -- "$cur")')
            elif kind[0] == "path":
                out += [f"{pad}            compopt -o filenames 2>/dev/null",
                        f'{pad}            mapfile -t COMPREPLY < <(compgen -f -- "$cur")']
            out += [f"{pad}            return 0", f"{pad}            ;;"]
        out.append(f"{pad}    esac")
    out.append(f"{pad}    ;;")
    return out


def generate(prog: str) -> str:
    """The completion script of ``prog`` (a key of :data:`COMMANDS`), from its parser in this tree."""
    module = importlib.import_module(COMMANDS[prog])
    return render(prog, COMMANDS[prog], describe(module.build_parser()), top_level_words())


def main(argv: list[str] | None = None) -> int:
    """Write the scripts; returns the exit status."""
    parser = argparse.ArgumentParser(prog="bash_completion.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for the scripts")
    parser.add_argument("progs", nargs="*", metavar="PROG", help=f"which commands ({', '.join(COMMANDS)}) [all]")
    args = parser.parse_args(argv)
    unknown = [p for p in args.progs if p not in COMMANDS]
    if unknown:
        parser.error(f"unknown command {unknown[0]!r} (choose from {', '.join(COMMANDS)})")
    args.out.mkdir(parents=True, exist_ok=True)
    for prog in args.progs or COMMANDS:
        (args.out / prog).write_text(generate(prog), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))  # this tree's parsers, not an installed copy's
    sys.exit(main())
