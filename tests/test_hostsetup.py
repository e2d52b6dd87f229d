"""The install steps' shared helpers: /etc/default files, idempotent writes (convocate.common.hostsetup)."""

from __future__ import annotations

import os
import stat

from convocate.common.hostsetup import StepReport, render_env_file, write_if_changed

HEADER = "# header\n"


def test_a_new_env_file_starts_with_the_header():
    assert render_env_file("", {"A": "1", "B": ":2"}, HEADER) == "# header\nA=1\nB=:2\n"


def test_env_file_keys_are_rewritten_in_place_and_other_lines_stay():
    current = "# mine\nA=1\nEXTRA=keep me\n# A=commented\nA=2\n"
    assert render_env_file(current, {"A": "3", "C": "4"}, HEADER) == "# mine\nA=1\nEXTRA=keep me\n# A=commented\nA=3\nC=4\n"


def test_write_if_changed_writes_once_and_fixes_the_mode(tmp_path):
    path, report = tmp_path / "f", StepReport()
    assert write_if_changed(path, b"x\n", mode=0o640, report=report, what="file")
    inode = path.stat().st_ino
    assert not write_if_changed(path, b"x\n", mode=0o640, report=report, what="file")
    assert path.stat().st_ino == inode and report.changes == 1 and report.steps[-1].endswith("unchanged")
    os.chmod(path, 0o666)
    assert not write_if_changed(path, b"x\n", mode=0o640, report=report, what="file")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 and report.steps[-1].endswith("owner/mode fixed")
    assert report.summary() == "2 change(s)"
