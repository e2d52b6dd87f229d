"""The man pages of the three commands (packaging/man/*.1, issue 13 item 3).

The argparse parsers are walked, so an added subcommand or option fails here until its page
documents it: every subcommand has a ``.SS`` section under COMMANDS, and every option of it
appears in that section (its synopsis or its option list); options of a named argument group
(``convocate-host``'s SSH options) may instead be described once in an OPTIONS subsection of
that name that the command's section refers to; ``-h``/``--help`` once under OPTIONS. The other
way round, an option a section describes (a ``.TP`` tag) must exist. EXIT STATUS lists the
statuses the command really returns. ``man --warnings``, ``groff -ww`` and lintian's
documentation/manual check report nothing.
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
from pathlib import Path

import pytest

import convocate.cli
import convocate_agent.cli
import convocate_host.cli
from convocate.cluster import AmbiguousReference
from convocate.common import errors
from convocate_host.target import HostError, SudoRequired

REPO = Path(__file__).resolve().parents[1]
MAN = REPO / "packaging" / "man"
PARSERS = {"convocate": convocate.cli.build_parser, "convocate-agent": convocate_agent.cli.build_parser,
           "convocate-host": convocate_host.cli.build_parser}
HELP_OPTIONS = {"-h", "--help"}
USAGE, INTERRUPTED = 2, 130  # argparse's exit status for a usage error; run_main's for Ctrl-C
TERMINATED = 128 + signal.SIGTERM  # a daemon's second SIGTERM during its shutdown (convocate.common.daemon)
#: The exit statuses each command can end with: its errors' exit_code values (convocate/common/errors.py
#: and the role's own), argparse's 2, 130, and the statuses adapters return themselves.
EXIT_STATUSES = {
    "convocate": {0, 1, USAGE, INTERRUPTED, TERMINATED, 124, AmbiguousReference.exit_code,
                  *(cls.exit_code for cls in errors._BY_CODE.values())},
    "convocate-agent": {0, 1, USAGE, INTERRUPTED, TERMINATED, errors.BadRequest.exit_code, errors.DockerError.exit_code,
                        errors.InternalError.exit_code, errors.ConfigError.exit_code},
    "convocate-host": {0, HostError.exit_code, USAGE, INTERRUPTED, errors.BadRequest.exit_code,
                       errors.Conflict.exit_code, errors.AdmissionDenied.exit_code, errors.Unreachable.exit_code,
                       SudoRequired.exit_code, errors.ConfigError.exit_code},
}
OPTION = re.compile(r"(?<![\w/-])(--?[A-Za-z0-9][A-Za-z0-9-]*)")
DEFAULT_GROUPS = {"positional arguments", "options", "optional arguments"}


def plain(roff: str) -> str:
    """Roff source as text: requests' names dropped, escapes resolved, quotes removed."""
    text = re.sub(r"^\.[A-Za-z]+ ?", "", roff, flags=re.M)
    text = re.sub(r"\\f[BIRP]|\\f\(..|\\c|\\&|\\e", "", text)
    text = re.sub(r"\\\(\w\w", " ", text)
    return text.replace("\\-", "-").replace('"', "")


def sections(source: str, request: str) -> list[tuple[str, str]]:
    """(heading, body) of each ``.SH`` or ``.SS`` section (``request``) of ``source``, in order."""
    parts = re.split(rf"^\.{request} (.*)$", source, flags=re.M)
    return [(plain(parts[i]).strip(), parts[i + 1]) for i in range(1, len(parts), 2)]


def page(prog: str) -> str:
    return (MAN / f"{prog}.1").read_text(encoding="utf-8")


def top(prog: str) -> dict[str, str]:
    return dict(sections(page(prog), "SH"))


def command_sections(prog: str) -> dict[str, str]:
    """Each command's section under COMMANDS, by every name in its heading ("version, help" gives two)."""
    found = {}
    for heading, body in sections(top(prog)["COMMANDS"], "SS"):
        for name in heading.split(","):
            found[name.strip()] = body
    return found


def subcommands(prog: str) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in PARSERS[prog]()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def grouped_options(sub: argparse.ArgumentParser) -> dict[str, str]:
    """Option string -> title of the named argument group it belongs to (``SSH``), for non-default groups."""
    return {s: group.title for group in sub._action_groups if group.title not in DEFAULT_GROUPS
            for action in group._group_actions for s in action.option_strings}


def tagged_options(body: str) -> set[str]:
    """The options a section describes: those in the tag line of each ``.TP``."""
    tags = re.findall(r"^\.TP\n(.*)$", body, flags=re.M)
    return {m for tag in tags for m in OPTION.findall(plain(tag))}


ALL = [(prog, name) for prog in sorted(PARSERS) for name in subcommands(prog)]


@pytest.mark.parametrize("prog", sorted(PARSERS))
def test_page_has_the_sections_of_a_command_page(prog):
    assert list(top(prog))[:4] == ["NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS"]
    assert {"OPTIONS", "EXIT STATUS", "FILES", "SEE ALSO"} <= set(top(prog))


@pytest.mark.parametrize("prog", sorted(PARSERS))
def test_every_subcommand_has_its_section(prog):
    documented = command_sections(prog)
    assert set(subcommands(prog)) <= set(documented)
    assert {"version", "help"} <= set(documented)  # run_main answers these two itself
    assert set(documented) <= set(subcommands(prog)) | {"version", "help"}  # no section for a removed command


@pytest.mark.parametrize(("prog", "name"), ALL)
def test_every_option_is_documented_in_its_subcommands_section(prog, name):
    sub = subcommands(prog)[name]
    body = command_sections(prog)[name]
    mentioned = set(OPTION.findall(plain(body)))
    groups = grouped_options(sub)
    options_section = top(prog)["OPTIONS"]
    group_sections = dict(sections(options_section, "SS"))
    missing = []
    for action in sub._actions:
        for option in action.option_strings:
            if option in HELP_OPTIONS or option in mentioned:
                continue
            group = groups.get(option)
            if group and f"{group} options" in plain(body) and option in tagged_options(
                    group_sections.get(f"{group} options", "")):
                continue
            missing.append(option)
    assert missing == [], f"{prog}.1 does not document {name} {missing}"


@pytest.mark.parametrize(("prog", "name"), ALL)
def test_a_section_describes_only_options_its_subcommand_has(prog, name):
    options = {s for a in subcommands(prog)[name]._actions for s in a.option_strings}
    assert tagged_options(command_sections(prog)[name]) <= options


@pytest.mark.parametrize("prog", sorted(PARSERS))
def test_help_options_are_described_under_options(prog):
    assert HELP_OPTIONS <= tagged_options(top(prog)["OPTIONS"])


@pytest.mark.parametrize("prog", sorted(PARSERS))
def test_exit_status_lists_exactly_the_statuses_the_command_returns(prog):
    body = top(prog)["EXIT STATUS"]
    listed = [int(n) for n in re.findall(r"^\.TP\n\.B (\d+)$", body, flags=re.M)]
    assert listed == sorted(listed)
    assert set(listed) == EXIT_STATUSES[prog]


def test_exit_statuses_named_for_the_shell_are_the_error_classes():
    """The pages' figures are the classes' exit_code values (if one moves, the pages must follow)."""
    assert (errors.BadRequest.exit_code, errors.NotFound.exit_code, errors.Conflict.exit_code,
            errors.Locked.exit_code, errors.AdmissionDenied.exit_code, errors.DockerError.exit_code) == (2, 3, 4, 5, 6, 7)
    assert (errors.Unreachable.exit_code, errors.InternalError.exit_code, errors.ProtocolError.exit_code,
            errors.ConfigError.exit_code, SudoRequired.exit_code) == (69, 70, 76, 78, 77)
    assert errors.ConvocateError.exit_code == HostError.exit_code == 1


@pytest.mark.parametrize("prog", sorted(PARSERS))
def test_exit_status_of_a_usage_error_is_the_one_documented(prog, capsys):
    main = {"convocate": convocate.cli.main, "convocate-agent": convocate_agent.cli.main,
            "convocate-host": convocate_host.cli.main}[prog]
    assert main(["no-such-command"]) == USAGE
    assert capsys.readouterr().err.count("usage:") == 1


@pytest.mark.parametrize("prog", sorted(PARSERS))
def test_man_reports_no_warning(prog):
    """As lintian runs it (manpage-has-errors-from-man), at 80 columns."""
    result = subprocess.run(["man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", str(MAN / f"{prog}.1")],
                            capture_output=True, text=True, env={"LC_ALL": "C.UTF-8", "MANWIDTH": "80",
                                                                 "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0
    assert result.stderr == ""


@pytest.mark.parametrize("prog", sorted(PARSERS))
def test_groff_reports_no_warning(prog):
    result = subprocess.run(["groff", "-man", "-ww", "-z", str(MAN / f"{prog}.1")], capture_output=True, text=True)
    assert (result.returncode, result.stderr) == (0, "")


@pytest.mark.parametrize("prog", sorted(PARSERS))
def test_every_option_is_typed_with_a_minus_sign_not_a_hyphen(prog):
    """Options are written ``\\-\\-name`` so that they can be copied and searched (lintian: hyphen-used-as-minus-sign)."""
    source = re.sub(r"^\.\\\".*$", "", page(prog), flags=re.M)
    assert re.findall(r"(?<![\\\w])-{1,2}[a-z][a-z-]*", source) == []


def test_lintian_manual_page_checks_are_clean(debs):
    result = subprocess.run(["lintian", "--pedantic", "--display-info", "--display-experimental",
                             "--check-part", "documentation/manual", *(str(debs[p]) for p in PARSERS)],
                            capture_output=True, text=True)
    assert result.stdout.strip() == "", result.stdout
    assert result.returncode == 0, result.stderr


# --- README.Debian ---------------------------------------------------------------------------
README_COMMAND = re.compile(r"`((?:convocate|convocate-agent|convocate-host)(?: [^`]*)?)`|^ {4}((?:convocate|convocate-agent"
                            r"|convocate-host) .*)$", re.M)


def readme_commands(package: str) -> list[list[str]]:
    text = (REPO / "debian" / f"{package}.README.Debian").read_text(encoding="utf-8")
    return [(m[1] or m[2]).split() for m in README_COMMAND.finditer(text)]


@pytest.mark.parametrize("package", sorted(PARSERS))
def test_readme_debian_command_lines_parse(package):
    """Every command README.Debian names exists, and every command line with options is one the parser accepts."""
    commands = readme_commands(package)
    assert commands
    for prog, *args in commands:
        if not args or args[0] in ("help", "version"):
            continue
        assert args[0] in subcommands(prog), (prog, args)
        if args[1:]:  # a line to type, not only the name of a command
            PARSERS[prog]().parse_args(args)


@pytest.mark.parametrize("package", sorted(PARSERS))
def test_readme_debian_says_what_purge_keeps(package):
    text = (REPO / "debian" / f"{package}.README.Debian").read_text(encoding="utf-8")
    assert "Remove and purge" in text
    if package != "convocate-host":
        assert "never removes\n/home/claude" in text or "never removes /home/claude" in text
        assert f"dpkg-reconfigure {package}" in text


def test_packages_ship_readme_debian(debs, tmp_path):
    for package in PARSERS:
        listing = subprocess.run(["dpkg-deb", "-c", str(debs[package])], capture_output=True, text=True,
                                 check=True).stdout
        assert f"./usr/share/doc/{package}/README.Debian" in listing
