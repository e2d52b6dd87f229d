"""Bash completion of the three commands (packaging/completion/, issue 13 item 3).

The scripts are generated the way the package build generates them (the generator's command
line), sourced in a real ``bash --norc``, and their function is called with ``COMP_WORDS`` and
``COMP_CWORD`` set as bash's programmable completion sets them; the tests assert on ``COMPREPLY``.
What to expect is read from the argparse parsers themselves, so a subcommand or option added
later is covered without touching this file.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

import convocate.cli
import convocate_agent.cli
import convocate_host.cli
from convocate.common.cli import HELP_WORDS, VERSION_WORDS

REPO = Path(__file__).resolve().parents[1]
GENERATOR = REPO / "packaging" / "completion" / "bash_completion.py"
PARSERS = {"convocate": convocate.cli.build_parser, "convocate-agent": convocate_agent.cli.build_parser,
           "convocate-host": convocate_host.cli.build_parser}
PACKAGE = {"convocate": "convocate", "convocate-agent": "convocate-agent", "convocate-host": "convocate-host"}
COMPLETIONS_DIR = "usr/share/bash-completion/completions"


def _generator_module():
    spec = importlib.util.spec_from_file_location("bash_completion", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


def subcommands(prog: str) -> dict[str, argparse.ArgumentParser]:
    parser = PARSERS[prog]()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def cases(predicate) -> list[tuple[str, str, argparse.Action]]:
    """(prog, subcommand, option action) for every option of every subcommand that ``predicate`` accepts."""
    return [(prog, name, action) for prog in PARSERS for name, sub in subcommands(prog).items()
            for action in sub._actions if action.option_strings and predicate(action)]


@pytest.fixture(scope="module")
def scripts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three scripts, written by the generator's command line as debian/rules runs it."""
    out = tmp_path_factory.mktemp("completion")
    subprocess.run([sys.executable, str(GENERATOR), "--out", str(out)], check=True, capture_output=True, text=True)
    return out


def complete(scripts: Path, words: list[str], cwd: Path | None = None) -> list[str]:
    """COMPREPLY for the command line ``words`` (the last one is the word being completed)."""
    prog = words[0]
    program = (
        '. "$1" || exit 9; shift\n'
        'COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}\n'
        f"{'_' + prog.replace('-', '_')}\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    result = subprocess.run(["bash", "--norc", "--noprofile", "-c", program, "bash", str(scripts / prog), *words],
                            capture_output=True, text=True, cwd=cwd, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return [line for line in result.stdout.splitlines() if line]


@pytest.mark.parametrize("prog", sorted(PARSERS))
def test_script_registers_its_function_and_has_no_hashbang(scripts, prog):
    text = (scripts / prog).read_text()
    assert not text.startswith("#!")  # lintian: bash-completion-with-hashbang
    result = subprocess.run(["bash", "--norc", "--noprofile", "-c", '. "$1" && complete -p "$2"', "bash",
                             str(scripts / prog), prog], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == f"complete -F _{prog.replace('-', '_')} {prog}"


@pytest.mark.parametrize("prog", sorted(PARSERS))
def test_top_level_offers_every_subcommand_and_the_help_and_version_words(scripts, prog):
    expected = set(subcommands(prog)) | set(HELP_WORDS) | set(VERSION_WORDS)
    assert sorted(complete(scripts, [prog, ""])) == sorted(expected)


def test_top_level_narrows_by_prefix(scripts):
    assert complete(scripts, ["convocate", "re"]) == ["replay", "reply", "restart", "restore"]
    assert complete(scripts, ["convocate-host", "init-"]) == ["init-agent", "init-shell"]
    assert sorted(complete(scripts, ["convocate-agent", "--"])) == ["--help", "--version"]


@pytest.mark.parametrize(("prog", "name"), [(p, n) for p in sorted(PARSERS) for n in subcommands(p)])
def test_each_subcommand_offers_exactly_its_options(scripts, prog, name):
    sub = subcommands(prog)[name]
    expected = {s for a in sub._actions for s in a.option_strings}
    assert expected >= {"-h", "--help"}
    assert sorted(complete(scripts, [prog, name, "-"])) == sorted(expected)
    children = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
    if children:  # a command of commands (convocate auth): their names before the first dash
        assert sorted(complete(scripts, [prog, name, ""])) == sorted(children[0].choices)
        for child_name, child in children[0].choices.items():
            options = {s for a in child._actions for s in a.option_strings}
            assert sorted(complete(scripts, [prog, name, child_name, "-"])) == sorted(options)
    else:
        assert sorted(complete(scripts, [prog, name, ""])) == sorted(expected)  # also before the first dash


def test_auth_set_completes_its_file_and_not_after_its_flags(scripts, tmp_path):
    (tmp_path / "key.txt").write_text("")
    assert complete(scripts, ["convocate", "auth", "set", "--from-file", "ke"], cwd=tmp_path) == ["key.txt"]
    assert complete(scripts, ["convocate", "auth", "set", "--api-key", "--fr"]) == ["--from-file"]
    assert complete(scripts, ["convocate", "auth", "--json", "st"]) == ["status"]


def test_options_after_other_words_and_options(scripts):
    """The subcommand is found behind earlier options and positionals; the prefix narrows."""
    assert complete(scripts, ["convocate", "new", "demo", "--no-start", "--p"]) == ["--port", "--protocol"]
    assert complete(scripts, ["convocate-host", "update", "--all", "--sh"]) == ["--shell-host"]


@pytest.mark.parametrize(("prog", "name", "action"), cases(lambda a: a.choices is not None),
                         ids=lambda v: getattr(v, "dest", v))
def test_option_with_choices_completes_its_choices(scripts, prog, name, action):
    for option in action.option_strings:
        assert complete(scripts, [prog, name, option, ""]) == [str(c) for c in action.choices]


@pytest.mark.parametrize(("prog", "name", "action"), cases(lambda a: a.type is Path),
                         ids=lambda v: getattr(v, "dest", v))
def test_path_option_completes_file_names(scripts, tmp_path, prog, name, action):
    (tmp_path / "alpha.key").write_text("")
    (tmp_path / "alps").mkdir()
    (tmp_path / "beta").write_text("")
    assert sorted(complete(scripts, [prog, name, action.option_strings[-1], "al"], cwd=tmp_path)) == [
        "alpha.key", "alps"]


@pytest.mark.parametrize(("prog", "name", "action"),
                         cases(lambda a: a.nargs != 0 and a.choices is None and a.type is not Path),
                         ids=lambda v: getattr(v, "dest", v))
def test_other_option_values_get_no_suggestion(scripts, prog, name, action):
    """After ``--port`` or ``--name`` the next word is a value: options would be wrong there."""
    assert complete(scripts, [prog, name, action.option_strings[-1], ""]) == []


def test_unknown_subcommand_gets_no_suggestion(scripts):
    assert complete(scripts, ["convocate", "frobnicate", "-"]) == []


def test_a_word_that_would_need_quoting_is_refused():
    generator = _generator_module()
    parser = argparse.ArgumentParser()
    parser.add_subparsers().add_parser("ls").add_argument("--mode", choices=["a b"])
    with pytest.raises(ValueError, match="quoting"):
        generator.describe(parser)


def test_debian_rules_generates_them_and_the_packages_install_them():
    rules = (REPO / "debian" / "rules").read_text()
    assert "packaging/completion/bash_completion.py --out debian/completion" in rules
    for prog, package in PACKAGE.items():
        lines = (REPO / "debian" / f"{package}.install").read_text().splitlines()
        assert f"debian/completion/{prog} {COMPLETIONS_DIR}" in lines


def test_built_packages_carry_the_generated_scripts(debs, scripts, tmp_path):
    for prog, package in PACKAGE.items():
        unpacked = tmp_path / package
        subprocess.run(["dpkg-deb", "-x", str(debs[package]), str(unpacked)], check=True)
        shipped = unpacked / COMPLETIONS_DIR / prog
        assert shipped.read_text() == (scripts / prog).read_text()
        assert shipped.stat().st_mode & 0o777 == 0o644
