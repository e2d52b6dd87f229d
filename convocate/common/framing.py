"""Newline-delimited JSON framing: one UTF-8 JSON object per line (DESIGN §3).

Every convocate subsystem carries lines of at most :data:`MAX_LINE_BYTES`. :class:`LineDecoder`
splits a byte stream into lines without touching a socket; :func:`read_frames` drives it from any
reader with an ``async read(n)``; :func:`encode_line` and :func:`decode_object` are the one JSON
encoder and decoder of the wire (no NaN or Infinity: RFC 8259 has none); :func:`encode_value` is that
encoder's rendering of a value inside a line, which :class:`EncodedObject` keeps for a dict sent many
times. The messages carried in those lines are :mod:`convocate.common.protocol`'s.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from convocate.common import messages
from convocate.common.errors import BadRequest, ProtocolError

#: Largest line, newline excluded, any convocate peer accepts (DESIGN §3): 1 MiB.
MAX_LINE_BYTES = 1 << 20

#: Longest error text an error response carries, in characters; a longer one loses its middle.
ERROR_TEXT_MAX = 8192

#: Bytes asked of a reader per call by :func:`read_frames` (4 MiB): more than an SSH channel's
#: receive window (asyncssh's default, 2 MiB), so that each read of an asyncssh channel empties
#: all it holds. asyncssh (2.24) lets a paused channel resume as soon as the reader takes a
#: little, and then opens the whole window again however much the channel still buffers: a
#: reader that takes less than that per read, and awaits other work between reads (a server
#: that yields to its other clients, or waits on what it forwards to), lets a fast peer send
#: without bound (measured: hundreds of MiB buffered in seconds). A read returns what is
#: there, so this costs nothing when little is.
READ_CHUNK = 4 << 20



class LineTooLong(BadRequest):
    """A line exceeded :data:`MAX_LINE_BYTES`; its bytes were discarded."""

    def __init__(self, limit: int) -> None:
        super().__init__(messages.MALFORMED_REQUEST.format(detail=messages.LINE_TOO_LONG.format(limit=limit)))
        self.limit = limit


class LineDecoder:
    """Split a byte stream into newline-terminated lines of bounded length.

    Feed it chunks as they arrive; it returns the complete lines. A line
    longer than ``max_line`` is not buffered: its bytes are dropped up to the
    next newline and a :class:`LineTooLong` takes its place in the output, so
    one oversized request costs a bounded amount of memory and the stream
    stays in step for the next line.

    Args:
        max_line: Maximum line length in bytes, newline excluded.
    """

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self._max = max_line
        self._buf = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> list[bytes | LineTooLong]:
        """Add ``data`` and return every line it completed.

        Args:
            data: The next chunk of the stream.

        Returns:
            Complete lines without their ``\\n`` (a trailing ``\\r`` is kept),
            in stream order, with a :class:`LineTooLong` instance standing for
            each oversized line.
        """
        out: list[bytes | LineTooLong] = []
        start = 0
        while True:
            nl = data.find(b"\n", start)
            if nl < 0:
                break
            if self._discarding:
                self._discarding = False
            elif len(self._buf) + (nl - start) > self._max:
                self._buf.clear()
                out.append(LineTooLong(self._max))
            else:
                self._buf += data[start:nl]
                out.append(bytes(self._buf))
                self._buf.clear()
            start = nl + 1
        rest = len(data) - start
        if self._discarding:
            return out
        if len(self._buf) + rest > self._max:
            self._buf.clear()
            self._discarding = True
            out.append(LineTooLong(self._max))
        else:
            self._buf += data[start:]
        return out

    def pending(self) -> bytes:
        """Return and forget the bytes after the last complete line."""
        rest = bytes(self._buf)
        self._buf.clear()
        return rest

    @property
    def partial(self) -> bool:
        """True while bytes of an unfinished line are held (or an oversized one is being skipped)."""
        return bool(self._buf) or self._discarding

    @property
    def discarding(self) -> bool:
        """True while the rest of an oversized line is being skipped."""
        return self._discarding


class ByteReader(Protocol):
    """Anything with ``async read(n) -> bytes`` that returns ``b""`` at EOF."""

    async def read(self, n: int = -1) -> bytes: ...  # pragma: no cover - protocol


async def read_frame_batches(reader: ByteReader, decoder: LineDecoder | None = None, read_size: int = READ_CHUNK,
                             batch_bytes: int | None = None) -> AsyncIterator[list[bytes | LineTooLong]]:
    """Yield the lines of ``reader`` in batches, until EOF.

    The batch form of :func:`read_frames`, for a server that handles many
    lines per read: one ``await`` per batch instead of one per line, and a
    natural point to yield to other tasks. A large read can be split into
    batches of about ``batch_bytes`` each, so that a caller may take all a
    reader holds in one read and still hand the loop back often.

    Args:
        reader: The byte stream, e.g. an asyncssh ``SSHReader`` opened with
            ``encoding=None``.
        decoder: The decoder to use; a new one with the default limit if omitted.
        read_size: Bytes asked of ``reader`` per read (:data:`READ_CHUNK` by default).
        batch_bytes: Bytes of input per batch; None for one batch per read.

    Yields:
        Non-empty lists of complete lines, in stream order (bytes without the
        newline, or :class:`LineTooLong` for each oversized line); last, the
        unterminated tail if it holds more than whitespace.
    """
    decoder = decoder or LineDecoder()
    step = batch_bytes or read_size
    while True:
        chunk = await reader.read(read_size)
        if not chunk:
            break
        for offset in range(0, len(chunk), step):
            items = decoder.feed(chunk[offset:offset + step] if len(chunk) > step else chunk)
            if items:
                yield items
    if not decoder.discarding:
        tail = decoder.pending()
        if tail.strip():
            yield [tail]


async def read_frames(reader: ByteReader, decoder: LineDecoder | None = None) -> AsyncIterator[bytes | LineTooLong]:
    """Yield the lines of ``reader`` until EOF.

    An unterminated last line is yielded too (a client that writes one request
    without a newline and closes its side is still answered).

    Args:
        reader: The byte stream, e.g. an asyncssh ``SSHReader`` opened with
            ``encoding=None``.
        decoder: The decoder to use; a new one with the default limit if omitted.

    Yields:
        Lines as bytes, or :class:`LineTooLong` for each oversized line.
    """
    async for items in read_frame_batches(reader, decoder):
        for item in items:
            yield item


def encode_line(obj: Any) -> bytes:
    """Render ``obj`` as one compact JSON line, newline included.

    Args:
        obj: A JSON-serialisable value.

    Returns:
        UTF-8 bytes ending in ``\\n``.

    Raises:
        ProtocolError: the rendering exceeds :data:`MAX_LINE_BYTES`.
    """
    data = encode_value(obj)
    if data is None:
        # A lone surrogate (from a "\ud800" escape a peer sent) has no UTF-8 form; escaped,
        # it is still JSON (RFC 8259 §7), so the line can carry it back.
        data = json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    return finish_line(data)


def encode_value(obj: Any) -> bytes | None:
    """``obj`` as :func:`encode_line` renders it within a line: compact JSON in UTF-8, no newline.

    Args:
        obj: A JSON-serialisable value.

    Returns:
        The bytes, or None when a string in ``obj`` holds a lone surrogate (no UTF-8 form:
        :func:`encode_line` then escapes the whole line as ASCII).
    """
    try:
        return _ENCODER.encode(obj).encode("utf-8")
    except UnicodeEncodeError:
        return None


def finish_line(data: bytes) -> bytes:
    """One rendered JSON value (:func:`encode_value`'s bytes, or a join of them) as a line.

    Raises:
        ProtocolError: ``data`` exceeds :data:`MAX_LINE_BYTES`.
    """
    if len(data) > MAX_LINE_BYTES:
        raise ProtocolError(f"message of {len(data)} bytes exceeds the {MAX_LINE_BYTES}-byte line limit")
    return data + b"\n"


class EncodedObject(dict):  # type: ignore[type-arg]
    """A JSON object (a dict) that keeps its :func:`encode_value` bytes once asked for them.

    For a value sent unchanged many times (the agent's session views, issue 17): a line
    that carries it can join the kept bytes instead of encoding the object again. Whoever
    builds one must not change it afterwards; a changed value is a new object.
    """

    __slots__ = ("_encoded",)
    _encoded: bytes | None

    def encoded(self) -> bytes | None:
        """The object's :func:`encode_value` bytes, made on the first call (None: a lone surrogate)."""
        try:
            return self._encoded
        except AttributeError:
            self._encoded = encode_value(self)
            return self._encoded


def decode_object(line: bytes, what: str = "request",
                  refusal: Callable[[str], Exception] | None = None) -> dict[str, Any]:
    """Parse one line as a JSON object.

    Args:
        line: One frame, without its newline.
        what: Word used in the error message.
        refusal: Makes the exception to raise from the problem's text (the caller's prefix, its
            error type); ``None`` raises :class:`BadRequest` with the bare text.

    Returns:
        The decoded object.

    Raises:
        BadRequest: the line is not UTF-8, not JSON, or not an object; the
            message names the problem without a prefix, for the caller to frame.
        Exception: what ``refusal`` makes, in place of that BadRequest.
    """
    if refusal is None:
        return _decode_object(line, what)
    try:
        return _decode_object(line, what)
    except BadRequest as e:
        raise refusal(e.message) from e


def _decode_object(line: bytes, what: str) -> dict[str, Any]:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRequest(f"{what} is not valid UTF-8 ({e.reason})") from e
    try:
        if text.startswith("\ufeff"):  # as json.loads says it
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        obj = _DECODER.decode(text)
    except json.JSONDecodeError as e:
        raise BadRequest(f"{what} is not valid JSON: {e}") from e
    except ValueError as e:  # an integer literal beyond Python's digit limit (sys.get_int_max_str_digits)
        raise BadRequest(f"{what} is not valid JSON: a number has more than {sys.get_int_max_str_digits()} "
                         "digits") from e
    except RecursionError as e:
        raise BadRequest(f"{what} nests too deeply") from e
    if not isinstance(obj, dict):
        raise BadRequest(f"{what} must be a JSON object, got {json_type(obj)}")
    return obj


def _refuse_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity; RFC 8259 §6 does not.
    raise json.JSONDecodeError(f"{name} is not a JSON value", name, 0)


def _finite_float(text: str) -> float:
    # 1e999 reads as infinity, which no JSON peer could read back when echoed (RFC 8259 §6).
    value = float(text)
    if value in (math.inf, -math.inf):
        raise json.JSONDecodeError(f"number {text[:40]} is out of range", text, 0)
    return value


# One encoder and one decoder for every line: ``json.dumps``/``json.loads`` with
# non-default arguments build a new one per call, a third of the cost of a small event.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)


def bounded_text(text: str, limit: int = ERROR_TEXT_MAX) -> str:
    """``text`` cut to about ``limit`` characters by dropping its middle.

    Error messages quote what the client sent; a value near the line limit
    would make the error itself too long to send. The head (which names the
    field) and the tail (which states the rule) are kept.
    """
    if len(text) <= limit:
        return text
    head, tail = limit * 2 // 3, limit // 3
    return f"{text[:head]}…[{len(text) - head - tail} characters cut]…{text[-tail:]}"


def json_type(value: Any) -> str:
    """Name the JSON type of a decoded value, for error messages (JSON Schema's type names)."""
    for python_type, name in _JSON_TYPE_NAMES:
        if isinstance(value, python_type):
            return name
    return type(value).__name__


# In this order: bool is a subclass of int.
_JSON_TYPE_NAMES: tuple[tuple[type, str], ...] = (
    (type(None), "null"), (bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"),
    (list, "array"), (dict, "object"),
)
