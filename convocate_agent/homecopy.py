"""Copying a session home without following what the session planted: every step through a directory fd.

A home belongs to its session, which may change it while a copy runs (DESIGN §8, issue 14). Every
entry is opened relative to its parent's fd with ``O_NOFOLLOW`` (open(2)), so a symlink is copied as
a link and never followed, and an entry swapped for something else between its ``lstat`` and its
``open`` is skipped. Sockets, FIFOs and device nodes are skipped too.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
from pathlib import Path

log = logging.getLogger("convocate_agent.store")  # the name the copy's log lines had before the split

#: How a directory of a home is opened: never through a symlink.
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class HomeCopier:
    """Copies directory trees, giving the copies the session's owner or the source's.

    Args:
        uid: Owner given to the copies unless ``keep_owner``.
        gid: Group given to the copies unless ``keep_owner``.
        chown: Whether to set owners at all (only root can give files away).
    """

    def __init__(self, uid: int, gid: int, chown: bool) -> None:
        self.uid = uid
        self.gid = gid
        self._chown = chown

    def copy_tree(self, source: Path, target: Path, *, keep_owner: bool = False) -> None:
        """Copy the contents of ``source`` into the existing, agent-made dir ``target``.

        Owners are copied when ``keep_owner``; otherwise everything becomes ``uid:gid``.
        ``source`` may belong to a session that changes it while the copy runs: every entry is
        opened relative to its parent's fd with ``O_NOFOLLOW``, so a symlink is copied as a
        link and never followed, and an entry swapped for something else between its ``lstat``
        and its ``open`` is skipped.
        """
        src_fd = os.open(source, DIR_FLAGS)
        try:
            dst_fd = os.open(target, DIR_FLAGS)
            try:
                self._copy_dir_fd(src_fd, dst_fd, str(source), keep_owner)
            finally:
                os.close(dst_fd)
        finally:
            os.close(src_fd)

    def _copy_dir_fd(self, src_fd: int, dst_fd: int, where: str, keep_owner: bool) -> None:
        for name in os.listdir(src_fd):
            try:
                st = os.stat(name, dir_fd=src_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            uid, gid = (st.st_uid, st.st_gid) if keep_owner else (self.uid, self.gid)
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                try:
                    child_src = os.open(name, DIR_FLAGS, dir_fd=src_fd)
                except OSError as e:  # swapped for a symlink or a file since the stat
                    log.info("copy: skipping %s/%s: %s", where, name, e.strerror)
                    continue
                try:
                    os.mkdir(name, 0o700, dir_fd=dst_fd)
                    child_dst = os.open(name, DIR_FLAGS, dir_fd=dst_fd)
                    try:
                        self._copy_dir_fd(child_src, child_dst, f"{where}/{name}", keep_owner)
                        self._copy_metadata(child_dst, os.fstat(child_src), uid, gid)
                    finally:
                        os.close(child_dst)
                finally:
                    os.close(child_src)
            elif stat.S_ISLNK(mode):
                try:
                    link = os.readlink(name, dir_fd=src_fd)
                except OSError:
                    continue
                os.symlink(link, name, dir_fd=dst_fd)
                if self._chown:
                    os.chown(name, uid, gid, dir_fd=dst_fd, follow_symlinks=False)
            elif stat.S_ISREG(mode):
                self._copy_file_fd(src_fd, dst_fd, name, uid, gid, where)
            else:
                log.info("copy: skipping special file %s/%s", where, name)

    def _copy_metadata(self, fd: int, st: os.stat_result, uid: int, gid: int) -> None:
        """Give the copy at ``fd`` the source's mode and times (``st``), and the session's owner when chowning."""
        if self._chown:
            os.fchown(fd, uid, gid)
        os.fchmod(fd, stat.S_IMODE(st.st_mode))
        os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))

    def _copy_file_fd(self, src_fd: int, dst_fd: int, name: str, uid: int, gid: int, where: str) -> None:
        try:
            fd_in = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=src_fd)
        except OSError as e:
            log.info("copy: skipping %s/%s: %s", where, name, e.strerror)
            return
        try:
            st = os.fstat(fd_in)
            if not stat.S_ISREG(st.st_mode):
                log.info("copy: skipping %s/%s: no longer a regular file", where, name)
                return
            fd_out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                             dir_fd=dst_fd)
            try:
                with open(fd_in, "rb", closefd=False) as src, open(fd_out, "wb", closefd=False) as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                self._copy_metadata(fd_out, st, uid, gid)
            finally:
                os.close(fd_out)
        finally:
            os.close(fd_in)
