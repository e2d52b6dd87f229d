"""The tmux control-mode stream of the recorder's client, pure: Docker's framing, tmux's notifications.

The recorder's client (``tmux -C attach-session -r``) runs in a Docker exec without a TTY, so its
stdout comes in Docker's multiplexed framing (Engine API, "Attach to a container": an 8-byte header
per frame); inside it are tmux's control-mode lines (tmux(1) CONTROL MODE): ``%output``,
``%layout-change``, ``%begin``/``%end``/``%error`` around command replies, ``%exit``.
"""

from __future__ import annotations

import codecs
import re
import struct

_OCTAL = re.compile(rb"\\([0-7]{3})")
_LAYOUT_SIZE = re.compile(r"^[0-9a-f]{4},(\d+)x(\d+),")
#: Bytes of Docker's frame header.
FRAME_HEADER = 8


def unescape(data: bytes) -> bytes:
    """Undo tmux's escaping in ``%output``: ``\\ooo`` (three octal digits) is one byte.

    tmux (control.c, ``control_append_data``) writes every byte below 0x20 and the backslash as
    ``\\ooo``; everything else, UTF-8 included, raw.
    """
    return _OCTAL.sub(lambda m: bytes([int(m.group(1), 8) & 0xFF]), data)


def layout_size(layout: str) -> tuple[int, int] | None:
    """The window size a tmux layout string carries: ``"b25f,80x24,0,0,2"`` → ``(80, 24)``.

    Source: tmux layout-custom.c: ``<checksum %04x>,<W>x<H>,<x>,<y>[,<pane>|{...}|[...]]``.
    Returns None for anything else.
    """
    m = _LAYOUT_SIZE.match(layout)
    return (int(m.group(1)), int(m.group(2))) if m else None


class ControlParser:
    """Turns a tmux control-mode client's stdout into recording events.

    ``feed(chunk)`` takes any slice of the byte stream and returns ``(code, data)`` pairs:
    ``("o", text)`` for output (all ``%output`` of the chunk joined, decoded with an incremental
    UTF-8 decoder so a character split across lines or chunks stays whole; bad bytes become
    U+FFFD), ``("r", "WxH")`` when ``%layout-change`` gives a new size, ``("exit", reason)`` at
    ``%exit``. Command replies (``%begin`` .. ``%end``/``%error``) and other notifications are
    skipped.
    """

    def __init__(self, size: tuple[int, int] | None = None) -> None:
        self._partial = b""
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._in_block = False
        self.size = size

    def feed(self, chunk: bytes) -> list[tuple[str, str]]:
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()
        out: list[tuple[str, str]] = []
        text: list[str] = []

        def flush_text() -> None:
            if text:
                joined = "".join(text)
                text.clear()
                if joined:
                    out.append(("o", joined))

        for raw in lines:
            line = raw[:-1] if raw.endswith(b"\r") else raw
            if self._in_block:
                if line.startswith((b"%end ", b"%error ")) or line in (b"%end", b"%error"):
                    self._in_block = False
                continue
            if line.startswith(b"%output "):
                parts = line.split(b" ", 2)
                text.append(self._decoder.decode(unescape(parts[2]) if len(parts) == 3 else b""))
            elif line.startswith(b"%begin"):
                self._in_block = True
            elif line.startswith(b"%layout-change "):
                parts = line.decode("ascii", "replace").split(" ")
                size = layout_size(parts[2]) if len(parts) > 2 else None
                if size is not None and size != self.size:
                    flush_text()
                    self.size = size
                    out.append(("r", f"{size[0]}x{size[1]}"))
            elif line.startswith(b"%exit"):
                flush_text()
                out.append(("exit", line[6:].decode("utf-8", "replace").strip()))
        flush_text()
        return out


def screen_event(capture: bytes, cursor: tuple[int, int]) -> str:
    """The ``"o"`` data that draws a captured pane: clear, home, the lines, cursor to ``(x, y)``.

    Args:
        capture: ``tmux capture-pane -p -e`` output (one line per row, with SGR escapes).
        cursor: ``(#{cursor_x}, #{cursor_y})``, 0-based.
    """
    lines = capture.decode("utf-8", "replace").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return "\x1b[H\x1b[2J" + "\r\n".join(lines) + f"\x1b[{cursor[1] + 1};{cursor[0] + 1}H"


def demux_header(header: bytes) -> tuple[int, int]:
    """Docker's non-TTY attach framing: 8 bytes, stream (1 stdout, 2 stderr), 3 zero, big-endian length."""
    stream, length = struct.unpack(">BxxxI", header)
    return stream, length


def split_frames(buf: bytes | bytearray) -> tuple[list[tuple[int, bytes]], int]:
    """The whole Docker frames at the start of ``buf``, and how many bytes they took.

    A frame cut at the end of ``buf`` is left for the caller to complete with the next read.

    Returns:
        ``([(stream, payload), ...], consumed)``; stream 1 is stdout, 2 stderr.
    """
    frames: list[tuple[int, bytes]] = []
    pos = 0
    while len(buf) - pos >= FRAME_HEADER:
        kind, length = demux_header(bytes(buf[pos:pos + FRAME_HEADER]))
        if len(buf) - pos - FRAME_HEADER < length:
            break
        frames.append((kind, bytes(buf[pos + FRAME_HEADER:pos + FRAME_HEADER + length])))
        pos += FRAME_HEADER + length
    return frames, pos
