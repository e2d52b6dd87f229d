"""The audit trail's line format and hash chain, shared by the agent (writer) and the shell (reader).

A record is one line of canonical JSON (``sort_keys``, compact separators, ``ensure_ascii``, DEL escaped too): the
bytes are well defined and printable ASCII only. Each record's ``prev`` is the hex
SHA-256 of the previous record's line bytes without the newline; the first record's is :data:`GENESIS`,
and ``seq`` counts 1, 2, ... (issue 19 item 4). A line that is not a record (a write torn by a power loss
or a full disk) may stand in the file only if the record after it says ``"repaired": true`` and chains
from the last whole record before it (``convocate_agent.audit``).

What the chain shows: an edited, inserted or deleted record anywhere but at the end. What it cannot show
alone: records cut from the end (and a rewrite of the whole chain from the edit on by someone who can
write the file); compare the agent's file with the shell's forwarded copy for that (docs/security.md).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from convocate.common import messages
from convocate.common.timefmt import parse_rfc3339

#: ``prev`` of the first record: 64 zeros.
GENESIS = "0" * 64
#: The syslog APP-NAME of forwarded audit records; the shell files them in ``<agent-id>.audit.jsonl``.
AUDIT_APP_NAME = "convocate-audit"


def canonical(record: dict[str, Any]) -> bytes:
    """The record's line bytes (no newline): sorted keys, compact, printable ASCII only.

    ``ensure_ascii`` escapes every control character but DEL (0x7f), which JSON allows raw and rsyslog
    would rewrite as ``#177`` on receipt: it is escaped as ``\\u007f`` too, so the forwarded copy stays
    byte-identical.
    """
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return text.replace("\x7f", "\\u007f").encode("ascii")


def line_hash(line: bytes) -> str:
    """Hex SHA-256 of a record's line bytes, without the newline: the next record's ``prev``."""
    return hashlib.sha256(line).hexdigest()


def parse_record(line: bytes) -> dict[str, Any] | None:
    """The record a line holds, or None if it is not a JSON object with an integer ``seq``."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    seq = record.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool):
        return None
    return record


def iter_lines(stream: BinaryIO) -> Iterator[tuple[int, bytes, bool]]:
    """``(line number from 1, line bytes without newline, whether a newline ended it)``, in order."""
    for number, raw in enumerate(stream, 1):
        whole = raw.endswith(b"\n")
        yield number, raw[:-1] if whole else raw, whole


def matches(record: dict[str, Any], *, session: str | None = None, operator: str | None = None,
            since_ns: int | None = None, until_ns: int | None = None) -> bool:
    """Whether a record passes the filters of ``audit_read`` / ``convocate audit``.

    Args:
        record: The record.
        session: Its ``session`` must be this UUID.
        operator: Its verified operator's ``name`` or ``fingerprint`` must be this.
        since_ns: Its ``time`` must be at or after this (nanoseconds since the epoch).
        until_ns: Its ``time`` must be at or before this.
    """
    if session is not None and record.get("session") != session:
        return False
    if operator is not None:
        who = record.get("operator") or {}
        if not isinstance(who, dict) or operator not in (who.get("name"), who.get("fingerprint")):
            return False
    if since_ns is not None or until_ns is not None:
        try:
            ns = parse_rfc3339(str(record.get("time", "")))
        except ValueError:
            return False
        if (since_ns is not None and ns < since_ns) or (until_ns is not None and ns > until_ns):
            return False
    return True


@dataclass
class ChainReport:
    """What :class:`ChainVerifier` found.

    Attributes:
        records: Whole records checked.
        broken: The first problem, one sentence naming the record (seq), its line and what is wrong;
            None when the chain holds.
        broken_seq: That record's ``seq`` (None: a line that is no record, or none broken).
        broken_line: That line's number.
        notes: Torn lines the agent repaired (reported, not failures).
    """

    records: int = 0
    broken: str | None = None
    broken_seq: int | None = None
    broken_line: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.broken is None


class ChainVerifier:
    """Checks seq and prev of one agent's records line by line; stops at the first problem.

    Args:
        source: Names the chain in messages (``agent k3v9x2qa``, a file path).
        duplicates: Accept a record that repeats, byte for byte, one already seen (the shell's copy:
            log forwarding is at least once, so a record may arrive twice); each is a note.
        keep: Keep each record's line hash by seq (:attr:`hashes`), to compare two copies.
    """

    def __init__(self, source: str, *, duplicates: bool = False, keep: bool = False) -> None:
        self.source = source
        self.report = ChainReport()
        self.hashes: dict[int, str] = {}
        self._duplicates = duplicates
        self._keep = keep or duplicates
        self._seq = 0
        self._prev = GENESIS
        self._torn_line: int | None = None

    def _fail(self, line: int, seq: int | None, reason: str) -> None:
        report = self.report
        report.broken_line, report.broken_seq = line, seq
        report.broken = (messages.AUDIT_CHAIN_BROKEN.format(source=self.source, seq=seq, line=line, reason=reason)
                         if seq is not None else f"{self.source}: {reason}")

    def feed(self, number: int, line: bytes, whole: bool = True) -> bool:
        """Check the next line; returns False once the chain is broken (further lines are ignored)."""
        if not self.report.ok:
            return False
        record = parse_record(line) if whole else None
        if record is None:
            if self._torn_line is not None:  # two bad lines in a row: no repair explains that
                self._fail(self._torn_line, None, messages.AUDIT_NOT_A_RECORD.format(line=self._torn_line))
                return False
            self._torn_line = number
            return True
        seq = record["seq"]
        if self._duplicates and seq <= self._seq and self.hashes.get(seq) == line_hash(line):
            self.report.notes.append(messages.AUDIT_DUPLICATE.format(source=self.source, line=number, seq=seq))
            return True
        if self._torn_line is not None and record.get("repaired") is not True:
            self._fail(self._torn_line, None, messages.AUDIT_UNREPAIRED.format(line=self._torn_line))
            return False
        if seq != self._seq + 1:
            if self._seq == 0:
                reason = messages.AUDIT_BAD_SEQ.format(got=seq, want_after="nothing", want=1)
            else:
                reason = messages.AUDIT_BAD_SEQ.format(got=seq, want_after=self._seq, want=self._seq + 1)
            if record.get("prev") != self._prev and self._seq:
                reason += "; " + messages.AUDIT_BAD_PREV.format(seq=self._seq)
            self._fail(number, seq, reason)
            return False
        if record.get("prev") != self._prev:
            self._fail(number, seq, messages.AUDIT_BAD_PREV.format(seq=self._seq) if self._seq
                       else messages.AUDIT_BAD_FIRST_PREV)
            return False
        if self._torn_line is not None:
            self.report.notes.append(messages.AUDIT_CHAIN_TORN.format(source=self.source, line=self._torn_line,
                                                                      seq=seq))
            self._torn_line = None
        self._seq, self._prev = seq, line_hash(line)
        if self._keep:
            self.hashes[seq] = self._prev
        self.report.records += 1
        return True

    def finish(self) -> ChainReport:
        """The report; a bad last line is a torn write not repaired yet (a note, the agent repairs it next)."""
        if self.report.ok and self._torn_line is not None:
            self.report.notes.append(f"{self.source}: line {self._torn_line} is not a whole record "
                                     "(a torn last write; the agent's next record repairs it)")
        return self.report


    @property
    def last_seq(self) -> int:
        """``seq`` of the last record that chained."""
        return self._seq


def verify_lines(lines: Iterable[tuple[int, bytes, bool]], source: str, *, duplicates: bool = False) -> ChainReport:
    """Verify a whole chain (:func:`iter_lines` of a file); see :class:`ChainVerifier` for ``duplicates``."""
    return run_verifier(ChainVerifier(source, duplicates=duplicates), lines).finish()


def run_verifier(verifier: ChainVerifier, lines: Iterable[tuple[int, bytes, bool]]) -> ChainVerifier:
    """Feed ``lines`` to ``verifier`` until it stops; returns it."""
    for number, line, whole in lines:
        if not verifier.feed(number, line, whole):
            break
    return verifier


def verify_file(path: Path, *, duplicates: bool = False) -> ChainReport:
    """Verify an audit file: an agent's ``audit.jsonl`` or the shell's ``<agent-id>.audit.jsonl``."""
    with path.open("rb") as f:
        return verify_lines(iter_lines(f), str(path), duplicates=duplicates)


def compare_copies(agent: ChainVerifier, copy: ChainVerifier) -> list[str]:
    """What the shell's copy shows about the agent's chain, both verified with ``keep``.

    The copy is out of the agent host's reach: a record it holds that the agent's chain lacks (cut
    from the end) or holds differently (rewritten) is a problem; records the copy lacks at its end
    are in flight or were never forwarded (a note, in :func:`lag_note`).

    Returns:
        One sentence per problem (the first of each kind), empty when the copies agree.
    """
    problems = []
    for seq, digest in sorted(copy.hashes.items()):
        mine = agent.hashes.get(seq)
        if mine is None and seq > agent.last_seq:
            problems.append(messages.AUDIT_COPY_AHEAD.format(agent=agent.source, copy=copy.source,
                                                             first=agent.last_seq + 1, last=copy.last_seq))
            break
        if mine != digest:
            problems.append(messages.AUDIT_COPY_DIFFERS.format(agent=agent.source, copy=copy.source, seq=seq))
            break
    return problems


def lag_note(agent: ChainVerifier, copy: ChainVerifier) -> str | None:
    """A note when the shell's copy ends before the agent's chain (records in flight or not forwarded)."""
    if copy.last_seq < agent.last_seq:
        return messages.AUDIT_COPY_BEHIND.format(copy=copy.source, count=agent.last_seq - copy.last_seq,
                                                 seq=copy.last_seq)
    return None
