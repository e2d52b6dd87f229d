"""Reading the audit trail: the chain's end (read from the file's tail) and ``audit_read``'s pages.

The record format and the hash chain are :mod:`convocate.common.auditchain`; the writer is
:class:`convocate_agent.audit.AuditLog`. An ``audit_read`` answer must fit the RPC's 1 MiB line, so a
page stops at ``max`` records (at most :data:`~convocate.common.ops.rules.AUDIT_READ_MAX`) or
:data:`READ_BUDGET` bytes, and lines that are not records
(a torn write) are answered as such so that ``convocate audit --verify`` sees them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convocate.common.auditchain import GENESIS, iter_lines, line_hash, matches, parse_record
from convocate.common.ops.params import AuditReadParams
from convocate.common.timefmt import parse_rfc3339

#: Bytes of records one ``audit_read`` answer holds at most: the answer must fit the RPC's 1 MiB line.
READ_BUDGET = 768 * 1024
#: Bytes read at a time when looking for the last line from the end of the file.
_TAIL_CHUNK = 64 * 1024


@dataclass
class Tail:
    """Where the chain stands at the end of the file.

    Attributes:
        seq: ``seq`` of the last whole record (0: none).
        prev: :func:`line_hash` of that record's line (:data:`GENESIS`: none).
        torn: The file does not end with a whole record (a torn write, or bytes that are not one).
        size: The file's size in bytes when it was read.
        open_line: The file's last byte is not a newline (the next append must end that line first).
    """

    seq: int = 0
    prev: str = GENESIS
    torn: bool = False
    size: int = 0
    open_line: bool = False


def _lines_backwards(fd: int, size: int) -> Iterator[tuple[bytes, bool]]:
    """The file's lines from the last, each with whether a newline ends it (reads the tail only)."""
    pos, buf, trailing = size, b"", True
    while True:
        cut = buf.rfind(b"\n")
        if cut < 0 and pos > 0:
            step = min(_TAIL_CHUNK, pos)
            pos -= step
            buf = os.pread(fd, step, pos) + buf
            continue
        if cut < 0:  # the file's first line
            if buf or not trailing:
                yield buf, not trailing
            return
        piece, buf = buf[cut + 1:], buf[:cut]
        if not trailing or piece:  # what follows the last newline is a torn line, if anything
            yield piece, not trailing
        trailing = False


def read_tail(path: Path) -> Tail:
    """Find the last whole record of the audit file without reading the whole file.

    Args:
        path: The audit file; a missing file is an empty chain.

    Returns:
        The chain's end. Lines after the last whole record (torn, or not a record) make ``torn`` true.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return Tail()
    try:
        size = os.fstat(fd).st_size
        open_line = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
        torn = False
        for line, whole in _lines_backwards(fd, size):
            record = parse_record(line) if whole else None
            if record is not None:
                return Tail(seq=record["seq"], prev=line_hash(line), torn=torn, size=size, open_line=open_line)
            torn = True
        return Tail(torn=torn, size=size, open_line=open_line)
    finally:
        os.close(fd)


def read_records(path: Path, params: AuditReadParams) -> dict[str, Any]:
    """:meth:`AuditLog.read_op`'s work (blocking; reads the file from the start).

    With ``raw`` each entry is ``{"line": N, "text": "<the line>"}`` instead of the parsed record, every
    line included and no filter applied: what ``convocate audit --verify`` hashes. A filter left out
    (``None``) lets every record through.
    """
    after = params.after_seq
    limit = params.max
    raw = params.raw
    filters = {} if raw else {
        "session": params.session, "operator": params.operator,
        "since_ns": parse_rfc3339(params.since) if params.since is not None else None,
        "until_ns": parse_rfc3339(params.until) if params.until is not None else None,
    }
    records: list[Any] = []
    is_record: list[bool] = []
    counted = 0
    budget, next_seq, more, last_seq = READ_BUDGET, after, False, 0
    if not path.exists():
        return {"records": [], "next_seq": after, "more": False}
    with path.open("rb") as f:
        for number, line, whole in iter_lines(f):
            record = parse_record(line) if whole else None
            if record is not None:
                last_seq = record["seq"]
            if last_seq < after or (record is not None and last_seq == after):
                continue  # on an earlier page
            text = line.decode("ascii", "backslashreplace")
            if raw:
                entry: Any = {"line": number, "text": text}
            elif record is None:
                entry = {"invalid_line": text[:4096], "line": number}
            elif not matches(record, **filters):
                next_seq = last_seq
                continue
            else:
                entry = record
            cost = 2 * len(line) + 64  # JSON escaping of the text can double it
            if counted >= limit or (records and cost > budget):  # bad lines do not count against max
                more = True
                while records and not is_record[-1]:  # lines after the page's last record: the next page's
                    records.pop()
                    is_record.pop()
                break
            records.append(entry)
            is_record.append(record is not None)
            counted += record is not None
            budget -= cost
            if record is not None:
                next_seq = last_seq
    return {"records": records, "next_seq": next_seq, "more": more}

