"""The New and Edit session forms as data: what the operator typed, turned into op params (pure).

The form speaks its own notation (port blank for none, ``0`` for auto), and
every value is then checked by the very functions the agent decodes its
requests with (:data:`convocate.common.ops.OPS` and
:func:`~convocate.common.ops.decode_params`), so a value the form accepts is
one the agent accepts. An error names the field, which the form uses to put
the cursor back on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from convocate.common import messages
from convocate.common.errors import BadRequest
from convocate.common.model import PORT_AUTO, PORT_MAX, PORT_NONE, SessionMeta
from convocate.common.ops import CPUS_MAX, CPUS_MIN, MEMORY_MAX_MB, MEMORY_MIN_MB, OPS, decode_params

#: The form's fields in the order they are shown (and checked), by their wire names.
FIELDS = ("name", "protocol", "port", "dns_name", "cpus", "memory_mb")
#: The label the form shows for each field.
LABELS = {"name": "Name", "protocol": "Protocol", "port": "Port", "dns_name": "DNS name", "cpus": "CPUs",
          "memory_mb": "Memory MiB"}


class FieldError(BadRequest):
    """A value of the form breaks its rule.

    Attributes:
        field: The field's wire name (one of :data:`FIELDS`).
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class SessionFields:
    """The text of the form's fields, exactly as typed.

    Attributes:
        name: Session name.
        protocol: ``tcp`` or ``udp`` (blank: tcp).
        port: Blank for none, ``0`` for auto, else 1-65535.
        dns_name: Blank for none.
        cpus: Cores; blank for the agent's default (New) or unchanged (Edit).
        memory_mb: MiB; blank for the agent's default (New) or unchanged (Edit).
    """

    name: str = ""
    protocol: str = "tcp"
    port: str = ""
    dns_name: str = ""
    cpus: str = ""
    memory_mb: str = ""

    @classmethod
    def of(cls, meta: SessionMeta) -> SessionFields:
        """The fields of an existing session, for the Edit form."""
        return cls(name=meta.name, protocol=meta.protocol, port=str(meta.port) if meta.port else "",
                   dns_name=meta.dns_name, cpus=f"{meta.cpus:g}", memory_mb=str(meta.memory_mb))


def _port(text: str) -> int:
    """The form's port notation → the wire's (DESIGN §3: 0 none, -1 auto)."""
    if not text:
        return PORT_NONE
    if not (text.isascii() and text.isdigit()) or int(text) > PORT_MAX:
        raise FieldError("port", messages.FORM_NOT_A_NUMBER.format(field="port", value=text,
                                                                   rule=messages.FORM_PORT_RULE))
    return PORT_AUTO if int(text) == 0 else int(text)


def _cpus(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        rule = messages.FORM_CPUS_RULE.format(low=CPUS_MIN, high=CPUS_MAX)
        raise FieldError("cpus", messages.FORM_NOT_A_NUMBER.format(field="cpus", value=text, rule=rule))
    return value


def _memory(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        rule = messages.FORM_MEMORY_RULE.format(low=MEMORY_MIN_MB, high=MEMORY_MAX_MB)
        raise FieldError("memory_mb", messages.FORM_NOT_A_NUMBER.format(field="memory_mb", value=text, rule=rule))
    return int(text)


def session_params(fields: SessionFields, op: str, session_id: str | None = None) -> dict:
    """Turn the form into the params of ``create`` or ``edit``, checked by the agent's own rules.

    Leading and trailing blanks are dropped; the protocol is lowercased. Blank
    CPUs or memory are left out (the agent's default, or unchanged). A blank
    port is left out of ``create`` and sent as 0 (none) in ``edit``.

    Args:
        fields: What the operator typed.
        op: ``create`` or ``edit``.
        session_id: The edited session's UUID (``edit`` only).

    Returns:
        The params as the agent decodes them (``dns_name`` lowercased, ...).

    Raises:
        FieldError: the first field, in form order, that breaks its rule; the
            message is the agent's own for that rule (``field "cpus": ...``).
    """
    spec = {p.name: p for p in OPS[op] or ()}
    params: dict = {"id": session_id} if op == "edit" else {}
    for key in FIELDS:  # one at a time, in form order, so the error knows its field
        value: object = getattr(fields, key).strip()
        if not value and (key in ("protocol", "cpus", "memory_mb") or (key == "port" and op == "create")):
            continue
        if key == "protocol":
            value = str(value).lower()
        elif key in _PARSE:
            value = _PARSE[key](str(value))
        check = spec[key].check
        if check is not None:
            try:
                check(value)
            except BadRequest as e:
                raise FieldError(key, e.message) from e
        params[key] = value
    return decode_params(op, params)  # the whole request, exactly as the agent decodes it


_PARSE = {"port": _port, "cpus": _cpus, "memory_mb": _memory}
