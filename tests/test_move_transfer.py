"""The transfer tar of a move (issue 18 item 2): byte-identical round trips and the hostile-home boundary.

The home is written by the session, so these tests attack the export and the import the way a
session could: a symlink to /etc/shadow, a hard link, a member named ``../../x``, a device node,
a second member of the same name, a file whose bytes do not match the manifest.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from convocate_agent import transfer
from convocate_agent.transfer import MANIFEST_NAME, Manifest, TransferRefused, hash_tree
from convocate_agent.transferexport import export_tree
from convocate_agent.transferimport import import_tree


def _home(tmp_path: Path) -> tuple[Path, Path]:
    home = tmp_path / "src" / "home"
    (home / ".claude" / "projects").mkdir(parents=True)
    (home / ".claude" / "projects" / "conv.jsonl").write_bytes(b'{"role":"user"}\n' * 1000)
    (home / "work.py").write_text("print('hi')\n")
    (home / "big.bin").write_bytes(os.urandom(3 * transfer.CHUNK + 17))
    (home / "empty").write_bytes(b"")
    os.chmod(home / "work.py", 0o750)
    os.symlink("work.py", home / "link-inside")
    rec = tmp_path / "src" / "rec"
    rec.mkdir()
    (rec / "2026-12-07T10-00-00Z.cast").write_text('{"version": 2}\n[0.1, "o", "hi"]\n')
    return home, rec


def _roundtrip(trees: dict[str, Path], dest: Path) -> tuple[Manifest, Manifest]:
    buf = io.BytesIO()
    sent = export_tree(buf, trees)
    buf.seek(0)
    return sent, import_tree(buf, dest)


def test_roundtrip_is_byte_identical_with_modes_and_inside_links(tmp_path: Path) -> None:
    home, rec = _home(tmp_path)
    sent, got = _roundtrip({"home": home, "recordings": rec}, tmp_path / "dst")
    assert got.files == sent.files
    assert hash_tree(tmp_path / "dst" / "home") == hash_tree(home)
    assert hash_tree(tmp_path / "dst" / "recordings") == hash_tree(rec)
    assert os.readlink(tmp_path / "dst" / "home" / "link-inside") == "work.py"
    assert os.stat(tmp_path / "dst" / "home" / "work.py").st_mode & 0o777 == 0o750
    assert sent.bytes == sum(p.stat().st_size for p in home.rglob("*") if p.is_file() and not p.is_symlink()) + \
        sum(p.stat().st_size for p in rec.rglob("*") if p.is_file())


def test_export_of_a_hostile_home_never_follows_or_sends_outside_links(tmp_path: Path) -> None:
    home, rec = _home(tmp_path)
    os.symlink("/etc/shadow", home / "shadow")
    os.symlink("../../../etc/passwd", home / ".claude" / "passwd")
    os.link(home / "work.py", home / "hard")  # sent as its own bytes, never as a link
    os.mkfifo(home / "fifo")
    buf = io.BytesIO()
    sent = export_tree(buf, {"home": home, "recordings": rec})
    assert sorted(sent.skipped) == ["home/.claude/passwd", "home/fifo", "home/shadow"]
    buf.seek(0)
    with tarfile.open(fileobj=buf, mode="r|") as tar:
        kinds = {m.name: m.type for m in tar}
    assert kinds["home/hard"] == tarfile.REGTYPE
    assert "home/shadow" not in kinds and "home/fifo" not in kinds
    buf.seek(0)
    import_tree(buf, tmp_path / "dst")
    assert (tmp_path / "dst" / "home" / "hard").read_bytes() == (home / "work.py").read_bytes()
    assert not os.path.lexists(tmp_path / "dst" / "home" / "shadow")


def _hostile_tar(*members: tuple[tarfile.TarInfo, bytes | None], manifest: dict | None = None) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
        body = json.dumps(manifest or {"files": {}, "bytes": 0, "skipped": []}).encode()
        info = tarfile.TarInfo(MANIFEST_NAME)
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    buf.seek(0)
    return buf


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    return info


HOSTILE = {
    "dotdot": [(_member("home", tarfile.DIRTYPE), None), (_member("home/../../x"), b"pwned")],
    "absolute": [(_member("/tmp/x"), b"pwned")],
    "symlink-to-shadow": [(_member("home", tarfile.DIRTYPE), None),
                          (_member("home/shadow", tarfile.SYMTYPE, "/etc/shadow"), None)],
    "symlink-escaping": [(_member("home", tarfile.DIRTYPE), None),
                         (_member("home/up", tarfile.SYMTYPE, "../../.."), None)],
    "hard-link": [(_member("home", tarfile.DIRTYPE), None),
                  (_member("home/hard", tarfile.LNKTYPE, "/etc/shadow"), None)],
    "device": [(_member("home", tarfile.DIRTYPE), None), (_member("home/sda", tarfile.BLKTYPE), None)],
    "char-device": [(_member("home", tarfile.DIRTYPE), None), (_member("home/mem", tarfile.CHRTYPE), None)],
    "fifo": [(_member("home", tarfile.DIRTYPE), None), (_member("home/f", tarfile.FIFOTYPE), None)],
    "outside-trees": [(_member("etc", tarfile.DIRTYPE), None)],
    # A symlink inside the tree, then a file written "through" it: the write must not follow it.
    "write-through-link": [(_member("home", tarfile.DIRTYPE), None),
                           (_member("home/d", tarfile.SYMTYPE, "."), None), (_member("home/d/x"), b"x")],
    "duplicate": [(_member("home", tarfile.DIRTYPE), None), (_member("home/a"), b"1"), (_member("home/a"), b"2")],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_import_refuses_a_hostile_tar_and_leaves_nothing(tmp_path: Path, case: str) -> None:
    dest = tmp_path / "staging" / "x"
    dest.parent.mkdir()
    with pytest.raises(TransferRefused) as e:
        import_tree(_hostile_tar(*HOSTILE[case]), dest)
    assert "transfer" in e.value.message
    assert not dest.exists()
    assert not (tmp_path / "x").exists() and not Path("/tmp/x").is_symlink()


def test_import_refuses_a_file_whose_bytes_differ_from_the_manifest(tmp_path: Path) -> None:
    buf = _hostile_tar((_member("home", tarfile.DIRTYPE), None), (_member("home/a"), b"evil"),
                       manifest={"files": {"home/a": "0" * 64}, "bytes": 4, "skipped": []})
    with pytest.raises(TransferRefused, match="SHA-256 differs"):
        import_tree(buf, tmp_path / "dst")
    assert not (tmp_path / "dst").exists()


def test_import_refuses_a_missing_file_and_a_cut_stream(tmp_path: Path) -> None:
    home, rec = _home(tmp_path)
    buf = io.BytesIO()
    export_tree(buf, {"home": home, "recordings": rec})
    cut = io.BytesIO(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(TransferRefused):
        import_tree(cut, tmp_path / "dst")
    assert not (tmp_path / "dst").exists()
    buf2 = _hostile_tar((_member("home", tarfile.DIRTYPE), None),
                        manifest={"files": {"home/gone": "0" * 64}, "bytes": 0, "skipped": []})
    with pytest.raises(TransferRefused, match="missing"):
        import_tree(buf2, tmp_path / "dst")


def test_a_verified_tree_is_placed_across_filesystems_whole(tmp_path: Path) -> None:
    """Staging (beside the homes) and the recordings (under /var/lib) are often two filesystems:
    rename(2) says EXDEV there, and the tree is copied beside its target, then renamed."""
    import shutil
    import tempfile

    from convocate_agent.transferimport import _rename_across

    if os.stat(tmp_path).st_dev == os.stat("/dev/shm").st_dev:
        pytest.skip("/dev/shm is on the same filesystem as the temporary directory here")
    staged = tmp_path / "staged"
    (staged / "sub").mkdir(parents=True)
    (staged / "a.cast").write_bytes(b"x" * 5000)
    (staged / "sub" / "b.cast").write_text("second")
    os.chmod(staged / "a.cast", 0o640)
    other = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="convocate-test-"))
    try:
        target = other / "session"
        _rename_across(staged, target)
        assert (target / "a.cast").read_bytes() == b"x" * 5000 and (target / "sub" / "b.cast").read_text() == "second"
        assert os.stat(target / "a.cast").st_mode & 0o777 == 0o640
        assert sorted(p.name for p in other.iterdir()) == ["session"]  # nothing left beside it
    finally:
        shutil.rmtree(other, ignore_errors=True)


def test_the_progress_total_is_about_the_streams_length(tmp_path: Path) -> None:
    """The bar's total (``tree_bytes``) counts tar's headers and padding: a home of small files
    is mostly those, and the bar must not end at 8x its total (20 KiB of 2.4 KiB)."""
    home, rec = _home(tmp_path)
    for i in range(40):
        (home / f"small-{i}.txt").write_text("x" * (i * 7))
    buf = io.BytesIO()
    export_tree(buf, {"home": home, "recordings": rec})
    estimate = transfer.tree_bytes(home) + transfer.tree_bytes(rec)
    assert estimate <= len(buf.getvalue()) <= estimate * 1.25 + 2 * tarfile.RECORDSIZE, (estimate, len(buf.getvalue()))
