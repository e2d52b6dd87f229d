#!/usr/bin/env python3
"""Merge per-Python-version site-packages into one that serves every supported interpreter.

    merge_site_packages.py OUT 3.11=DIR 3.12=DIR 3.13=DIR

Each DIR is what ``pip install --target DIR --python-version X.Y --only-binary=:all:`` put there for one
interpreter, from the same pinned requirements. They may differ only where CPython's import system looks
for a file by interpreter version, and in the wheel's own record of that:

- version-tagged extension modules, ``NAME.cpython-3XY-<platform>.so`` (PEP 3149 tags; the import system
  of 3.XY loads only its own tag, or ``NAME.abi3.so``): each is kept, and each version must carry the same
  set of extension module names (a module built for one interpreter only would fail on the others);
- ``*.dist-info/WHEEL``: its ``Tag:`` lines name the wheel each version installed; the merged file has
  every version's tags, its other lines must agree.

Any other file present in one tree and not another, or with other bytes (an ``abi3.so`` from two different
wheels, a pure-Python file of another release), stops the merge with a message naming it: a zipapp that
would behave differently per interpreter is not built.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

#: NAME.cpython-3XY[-PLATFORM].so (PEP 3149; the platform part is sysconfig's MULTIARCH).
TAGGED_EXTENSION = re.compile(r"^(?P<module>[^.]+)\.cpython-(?P<version>3\d+)(?:-[^.]+)?\.so$")


class MergeError(Exception):
    """Two interpreters' site-packages disagree on a file that all of them share."""


def tagged_extension(path: Path) -> tuple[str, str] | None:
    """``(module path without the tag, '3XY')`` for a version-tagged extension module, else None."""
    match = TAGGED_EXTENSION.match(path.name)
    if match is None:
        return None
    return str(path.with_name(match["module"])), match["version"]


def merge_wheel_files(texts: dict[str, str], where: str) -> str:
    """One WHEEL file (the wheel spec's ``Key: value`` lines) with the ``Tag:`` lines of every version.

    Args:
        texts: Python version ("3.11") -> that version's WHEEL text.
        where: The file's path in site-packages, for the error message.

    Returns:
        The lines all versions share, in their order, then every distinct ``Tag:`` line, sorted.

    Raises:
        MergeError: A line other than ``Tag:`` differs between versions.
    """
    others = {version: [line for line in text.splitlines() if not line.startswith("Tag:")]
              for version, text in texts.items()}
    first_version, first = next(iter(others.items()))
    for version, lines in others.items():
        if lines != first:
            raise MergeError(f"{where}: Python {first_version} and {version} installed different wheels "
                             f"(WHEEL differs beyond its Tag lines: {first} vs {lines})")
    tags = sorted({line for text in texts.values() for line in text.splitlines() if line.startswith("Tag:")})
    return "\n".join([*first, *tags]) + "\n"


def merge(out: Path, trees: dict[str, Path]) -> None:
    """Write the union of ``trees`` into ``out`` (which must not exist), refusing any disagreement.

    Args:
        out: The merged site-packages to create.
        trees: Python version ("3.11") -> the site-packages pip made for it.

    Raises:
        MergeError: The trees disagree on a file (see the module docstring); ``out`` is then incomplete and
            the caller removes it.
    """
    files = {version: {p.relative_to(tree) for p in tree.rglob("*") if p.is_file() or p.is_symlink()}
             for version, tree in trees.items()}
    everywhere = set.union(*files.values())
    extensions: dict[str, set[str]] = {}
    for version, names in files.items():
        tag = version.replace(".", "")
        modules = set()
        for name in names:
            tagged = tagged_extension(name)
            if tagged is not None:
                if tagged[1] != tag:
                    raise MergeError(f"{name}: an extension module for CPython {tagged[1]} in the tree of "
                                     f"Python {version}")
                modules.add(tagged[0])
        extensions[version] = modules
    first_version, first_modules = next(iter(extensions.items()))
    for version, modules in extensions.items():
        if modules != first_modules:
            raise MergeError(f"version-tagged extension modules differ: Python {first_version} has "
                             f"{sorted(first_modules - modules)} that {version} lacks, {version} has "
                             f"{sorted(modules - first_modules)} that {first_version} lacks")

    out.mkdir(parents=True)
    for name in sorted(everywhere, key=str):
        holders = [version for version in trees if name in files[version]]
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if tagged_extension(name) is not None:
            shutil.copy2(trees[holders[0]] / name, target)
            continue
        if len(holders) != len(trees):
            missing = [version for version in trees if version not in holders]
            raise MergeError(f"{name}: installed for Python {', '.join(holders)} but not for {', '.join(missing)}")
        contents = {version: (trees[version] / name).read_bytes() for version in holders}
        if len(set(contents.values())) == 1:
            shutil.copy2(trees[holders[0]] / name, target)
        elif name.name == "WHEEL" and name.parent.name.endswith(".dist-info"):
            texts = {version: data.decode() for version, data in contents.items()}
            target.write_text(merge_wheel_files(texts, str(name)))
            shutil.copymode(trees[holders[0]] / name, target)
        else:
            differing = [version for version in holders if contents[version] != contents[holders[0]]]
            raise MergeError(f"{name}: Python {holders[0]} and {', '.join(differing)} have different contents "
                             "(only version-tagged extension modules and WHEEL tags may differ)")


def main(argv: list[str]) -> int:
    """Command line: ``OUT VERSION=DIR...``; exit status 1 with the reason on stderr when the trees disagree."""
    if len(argv) < 3 or not all("=" in arg for arg in argv[2:]):
        print(__doc__.splitlines()[2].strip(), file=sys.stderr)
        return 2
    trees = {version: Path(tree) for version, tree in (arg.split("=", 1) for arg in argv[2:])}
    try:
        merge(Path(argv[1]), trees)
    except MergeError as e:
        print(f"merge_site_packages: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
