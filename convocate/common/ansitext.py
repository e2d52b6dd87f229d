"""Terminal output as plain text: ANSI escape sequences (ECMA-48) stripped, output split into lines.

:func:`strip_ansi` removes control sequences from a string; :class:`LineSplitter` turns a stream
of terminal output into the lines a reader saw, the way a terminal moves its cursor. Pure text:
:mod:`convocate.common.asciicast` applies it to recordings (issue 19 item 2).
"""

from __future__ import annotations

import re

# ECMA-48: CSI is ESC [ parameter bytes 0x30-0x3F, intermediate bytes 0x20-0x2F, a final byte 0x40-0x7E;
# OSC (ESC ]) ends at BEL or ST (ESC \); DCS (ESC P), SOS (ESC X), PM (ESC ^) and APC (ESC _) end at ST;
# any other escape sequence is ESC, intermediates 0x20-0x2F, a final byte 0x30-0x7E.
_CSI = r"\x1b\[(?P<params>[0-?]*)[ -/]*(?P<final>[@-~])|\x9b[0-?]*[ -/]*[@-~]"
_STRING = r"\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[PX^_].*?\x1b\\"
_ESCAPE = r"\x1b[ -/]*[0-~]"
_SEQUENCE = re.compile(f"{_CSI}|{_STRING}|{_ESCAPE}", re.S)
#: The start of a sequence that is not complete yet (at the end of the text so far).
_INCOMPLETE = re.compile(r"(?:\x1b(?:\[[0-?]*[ -/]*|\][^\x07\x1b]*\x1b?|[PX^_].*\x1b?|[ -/]*)?|\x9b[0-?]*[ -/]*)\Z",
                         re.S)
_STRIP = re.compile(f"{_CSI}|{_STRING}|\\x1b[\\]PX^_].*\\Z|{_ESCAPE}|[\\x00-\\x08\\x0b-\\x1f\\x7f-\\x9f]", re.S)
#: Longest unfinished escape sequence held back between events; a longer one is dropped.
PENDING_MAX = 64 * 1024
#: CSI finals that move the cursor to another row (ECMA-48: CUU, CUD, CNL, CPL, CUP, HVP, VPA).
ROW_MOVES = "ABEFHfd"
TAB_WIDTH = 8


def strip_ansi(text: str) -> str:
    """``text`` without escape sequences and control characters.

    Removed: CSI sequences (7- and 8-bit), OSC strings (ended by BEL or ST), DCS, SOS, PM and APC
    strings (ended by ST; an unterminated one runs to the end of ``text``), every other escape
    sequence, and every C0 and C1 control character except ``\\n`` and ``\\t`` (so ``\\r`` too,
    and DEL). Source: ECMA-48 §5 (control functions), §8.3.89 (CSI).
    """
    return _STRIP.sub("", text)


class LineSplitter:
    """Turns a stream of output into plain-text lines as a terminal would show each line at its end.

    ``\\r\\n``, ``\\n`` (and VT, FF) end a line. Within a line the splitter keeps a cursor:
    a bare ``\\r`` returns it to column 0 and what follows overwrites the line so far (a
    progress bar's last state is what remains), backspace moves it left, a tab moves it to the
    next multiple of 8, and the CSI sequences that act on one line are applied: erase in line
    (``K``: 0 to the end, 1 to the cursor, 2 all), cursor forward/back (``C``/``D``) and column
    (``G``). A move to another row (cursor up/down/next/previous line ``A B E F``, cursor position
    ``H``/``f``, line position ``d``) ends the line as a newline would, when it holds text (Claude
    Code draws its rows that way, with no newline at all), and the next one starts at the column
    the move leaves. The approximation: every other sequence is ignored, so a full-screen program
    gives its text in the order it was written, a row drawn in several visits comes as several
    lines, lines may repeat as it redraws, wide characters count one column, and nothing wraps at
    the terminal's width. Sequences split across events are joined first.

    Each line carries the time of the event that wrote its first character (or ended it, for
    an empty line).
    """

    def __init__(self) -> None:
        self._cells: list[str] = []
        self._col = 0
        self._start: float | None = None
        self._pending = ""

    def feed(self, t: float, data: str) -> list[tuple[float, str]]:
        """Add output written at ``t`` (unix seconds); returns the lines it completed as ``(time, line)``."""
        text = self._pending + data
        self._pending = ""
        incomplete = _INCOMPLETE.search(text)
        if incomplete is not None and incomplete.start() < len(text):
            held = text[incomplete.start():]
            text = text[:incomplete.start()]
            if len(held) <= PENDING_MAX:
                self._pending = held
        out: list[tuple[float, str]] = []
        pos = 0
        for m in _SEQUENCE.finditer(text):
            self._text(t, text[pos:m.start()], out)
            if m.group("final"):
                self._csi(m.group("params"), m.group("final"), t, out)
            pos = m.end()
        self._text(t, text[pos:], out)
        return out

    def flush(self, t: float | None = None) -> list[tuple[float, str]]:
        """The unfinished last line, if it has any text (end of the recording)."""
        if not self._cells:
            return []
        line = (self._start if self._start is not None else (t or 0.0), "".join(self._cells).rstrip(" "))
        self._cells, self._col, self._start = [], 0, None
        return [line]

    def _csi(self, params: str, final: str, t: float, out: list[tuple[float, str]]) -> None:
        try:
            n = int(params) if params.isdigit() else 0
        except ValueError:
            n = 0
        if final in ROW_MOVES:
            if any(c != " " for c in self._cells):
                out.append((self._start if self._start is not None else t, "".join(self._cells).rstrip(" ")))
            self._cells, self._start = [], None
            if final in "Hf":
                column = params.split(";")[1] if ";" in params else ""
                self._col = int(column) - 1 if column.isdigit() and int(column) > 0 else 0
            elif final in "EF":
                self._col = 0
        elif final == "K":
            if n == 0:
                del self._cells[self._col:]
            elif n == 1:
                for i in range(min(self._col + 1, len(self._cells))):
                    self._cells[i] = " "
            elif n == 2:
                self._cells = []
        elif final == "C":
            self._col += max(n, 1)
        elif final == "D":
            self._col = max(0, self._col - max(n, 1))
        elif final == "G":
            self._col = max(n, 1) - 1

    def _text(self, t: float, text: str, out: list[tuple[float, str]]) -> None:
        for ch in text:
            if ch in "\n\x0b\x0c":
                out.append((self._start if self._start is not None else t, "".join(self._cells).rstrip(" ")))
                self._cells, self._col, self._start = [], 0, None
            elif ch == "\r":
                self._col = 0
            elif ch == "\b":
                self._col = max(0, self._col - 1)
            elif ch == "\t":
                self._col = (self._col // TAB_WIDTH + 1) * TAB_WIDTH
            elif ch < " " or "\x7f" <= ch <= "\x9f":
                continue
            else:
                if self._start is None:
                    self._start = t
                if self._col >= len(self._cells):
                    self._cells.extend(" " * (self._col - len(self._cells) + 1))
                self._cells[self._col] = ch
                self._col += 1
