"""The base of every op's params class, its registration, and strict decoding (DESIGN §3).

:func:`op` registers a params dataclass under its op's name in :data:`PARAMS`;
:func:`decode_params` checks a request against the registered declaration and
:func:`decode_request` turns it into the op's params object, what the agent's handler takes. The
classes themselves are in :mod:`convocate.common.ops.params`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Generic, TypeVar

from convocate.common import messages
from convocate.common.errors import BadRequest
from convocate.common.framing import json_type
from convocate.common.ops import results as r
from convocate.common.ops.rules import KIND_NAMES, Param, kind_matches

R = TypeVar("R")
P = TypeVar("P", bound="OpParams[Any]")

#: Every op's params class, by op name, in the reference's order (filled by :func:`op`).
PARAMS: dict[str, type[OpParams[Any]]] = {}


def wire(param: Param, *, secret: bool = False) -> Any:
    """A dataclass field for ``param``: required without a default, optional with ``param.default``.

    An optional field left out reads as ``param.default``: what the agent takes an absent field for
    (``None`` where absence is a meaning of its own, e.g. ``edit``'s "keep"). Only the fields given
    when the object was made are sent (:meth:`OpParams.to_wire`), so a default never reaches the wire.

    Args:
        param: The field's rule; its ``name`` must be the field's name (:func:`op` checks).
        secret: Keep the value out of ``repr`` (a credential's secret must not reach a log or a traceback).
    """
    default = dataclasses.MISSING if param.required else param.default
    return dataclasses.field(default=default, repr=not secret, metadata={"param": param})


class OpParams(Generic[R]):
    """The base of every op's params class; ``R`` is what the op's result reads as.

    Subclasses are frozen, keyword-only dataclasses decorated with :func:`op`. A sender may give an
    optional field as ``None``: absent, as if left out.
    """

    OP: ClassVar[str]
    SUMMARY: ClassVar[str]
    RESULT: ClassVar[r.ResultReader]
    #: The fields' rules in declaration order; None for an open object (``settings-set``).
    SPEC: ClassVar[tuple[Param, ...] | None]
    ORIGINAL: ClassVar[bool]
    #: The params are an open object its handler checks (``settings-set``): no field rules.
    OPEN: ClassVar[bool] = False

    #: The names of the fields given when the object was made (set by the ``__init__`` :func:`op` wraps).
    _given: frozenset[str]

    def to_wire(self) -> dict[str, Any]:
        """The request's ``params`` object: every field given and not ``None``, under its wire name.

        A field left out (which reads as its default) is not sent: the request is the JSON object a
        client of the original protocol writes by hand, and the agent applies its default.
        """
        return {f.name: v for f in dataclasses.fields(self)  # type: ignore[arg-type]
                if f.name in self._given and (v := getattr(self, f.name)) is not None}

    @classmethod
    def check_together(cls, decoded: dict[str, Any]) -> None:
        """A rule across fields, run by :func:`decode_params` after each field passed its own; none here.

        Raises:
            BadRequest: the fields break the rule (the message names them).
        """

    @classmethod
    def decode(cls: type[P], params: dict[str, Any]) -> P:
        """Strictly decode a request's ``params`` into this class (see :func:`decode_params`).

        Raises:
            BadRequest: ``decode params: ...`` naming the first offending field.
        """
        return cls(**decode_params(cls.OP, params))

    def read_result(self, result: Any, agent_id: str) -> R:
        """The response's ``result`` as this op's result type.

        Raises:
            ProtocolError: the result is not of the op's shape.
        """
        return r.read_result(self.RESULT, self.OP, result, agent_id)  # type: ignore[no-any-return]


async def run_op(call: Callable[[str, dict[str, Any]], Awaitable[Any]], params: OpParams[R], agent_id: str) -> R:
    """Send ``params`` through ``call`` (an ``(op, params) -> result`` sender) and read the result as its op's type.

    The one way a typed request is sent: ``AgentClient.request`` and the operator claim (which runs on a
    connection still being set up) both use it.

    Raises:
        ConvocateError: what ``call`` raises; ProtocolError when the result is not of the op's shape.
    """
    return params.read_result(await call(params.OP, params.to_wire()), agent_id)


def op(name: str, summary: str, result: r.ResultReader, *, original: bool = False
       ) -> Callable[[type[P]], type[P]]:
    """Register a params dataclass as op ``name``'s.

    Args:
        name: The op's wire name.
        summary: What it does, for the reference.
        result: How its result reads (and what the reference says it answers).
        original: The op is in the original protocol (no "(ext)" mark).

    Raises:
        AssertionError: at import, a field's name and its Param's differ, or the op is declared twice.
    """
    def register(cls: type[P]) -> type[P]:
        assert name not in PARAMS, f"op {name} declared twice"
        spec = None if cls.OPEN else tuple(f.metadata["param"] for f in dataclasses.fields(cls))  # type: ignore[arg-type]
        for f, param in zip(dataclasses.fields(cls), spec, strict=True) if spec is not None else ():  # type: ignore[arg-type]
            assert f.name == param.name, f"{cls.__name__}.{f.name} carries the rule of {param.name!r}"
        cls.OP, cls.SUMMARY, cls.RESULT, cls.SPEC, cls.ORIGINAL = name, summary, result, spec, original
        cls.__init__ = _noting_given(cls.__init__)  # type: ignore[method-assign]
        PARAMS[name] = cls
        return cls
    return register


def _noting_given(init: Callable[..., None]) -> Callable[..., None]:
    """``init`` (a dataclass's keyword-only ``__init__``), also keeping which fields were given."""
    @functools.wraps(init)
    def __init__(self: OpParams[Any], **fields: Any) -> None:
        init(self, **fields)
        object.__setattr__(self, "_given", frozenset(fields))  # the dataclass is frozen
    return __init__


def decode_request(op: str, params: dict[str, Any]) -> OpParams[Any]:
    """A request's ``params`` as ``op``'s params object, what the agent's handler of ``op`` takes.

    Args:
        op: The operation name.
        params: The request's ``params`` object.

    Returns:
        An instance of ``PARAMS[op]``: each field present checked and normalised (:func:`decode_params`),
        each field absent at its default.

    Raises:
        BadRequest: ``unknown op: "<op>"``, or ``decode params: ...`` naming the first offending field.
    """
    return _registered(op).decode(params)


def decode_params(op: str, params: dict[str, Any]) -> dict[str, Any]:
    """Validate ``params`` against ``op``'s declaration.

    Args:
        op: The operation name.
        params: The request's ``params`` object.

    Returns:
        A new dict holding only the fields present, each checked and
        normalised (e.g. ``dns_name`` lowercased, ``protocol: ""`` → ``tcp``).

    Raises:
        BadRequest: ``unknown op: "<op>"``, or ``decode params: ...`` naming
            the first offending field.
    """
    cls = _registered(op)
    spec = cls.SPEC
    if spec is None:
        return dict(params)
    known = {p.name: p for p in spec}
    for key in params:
        if key not in known:
            raise BadRequest(messages.DECODE_PARAMS.format(detail=messages.UNKNOWN_FIELD.format(field=key)))
    out: dict[str, Any] = {}
    for p in spec:
        if p.name not in params:
            if p.required:
                raise BadRequest(messages.DECODE_PARAMS.format(detail=messages.MISSING_FIELD.format(field=p.name)))
            continue
        out[p.name] = _checked(p, params[p.name])
    try:
        cls.check_together(out)
    except BadRequest as e:
        raise BadRequest(messages.DECODE_PARAMS.format(detail=e.message)) from e
    return out


def _registered(op: str) -> type[OpParams[Any]]:
    """``op``'s params class.

    Raises:
        BadRequest: ``unknown op: "<op>"``.
    """
    cls = PARAMS.get(op)
    if cls is None:
        raise BadRequest(messages.UNKNOWN_OP.format(op=op))
    return cls


def _checked(p: Param, value: Any) -> Any:
    if not kind_matches(p.kind, value):
        raise BadRequest(messages.DECODE_PARAMS.format(
            detail=messages.WRONG_TYPE.format(field=p.name, expected=KIND_NAMES[p.kind], got=json_type(value))))
    if p.check is None:
        return value
    try:
        return p.check(value)
    except BadRequest as e:
        raise BadRequest(messages.DECODE_PARAMS.format(detail=e.message)) from e
