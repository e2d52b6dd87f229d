"""The RPC operations: each op's params and result as types, and strict decoding (DESIGN §3).

- :mod:`~convocate.common.ops.rules`: the rule of each parameter (JSON kind, bounds, validators);
- :mod:`~convocate.common.ops.base`: the params base class, :data:`PARAMS` (what the agent
  dispatches), :func:`decode_params` and :func:`decode_request`;
- :mod:`~convocate.common.ops.params`: one params dataclass per op, and :data:`OPS` (what the
  agent decodes);
- :mod:`~convocate.common.ops.results`: what each op answers, as types;
- :mod:`~convocate.common.ops.reference`: the op reference, ``docs/ops.md``.

The names most callers need are importable from here.
"""

from convocate.common.ops.base import PARAMS, OpParams, decode_params, decode_request
from convocate.common.ops.params import OPS, ORIGINAL_OPS
from convocate.common.ops.reference import OP_DOCS, reference_markdown
from convocate.common.ops.rules import (
    CAPTURE_LINES_MAX,
    CPUS_MAX,
    CPUS_MIN,
    GREP_MATCHES_MAX,
    GREP_PATTERN_MAX,
    MEMORY_MAX_MB,
    MEMORY_MIN_MB,
    RECORDING_READ_MAX,
    SEND_TEXT_MAX,
    Param,
)

__all__ = ["CAPTURE_LINES_MAX", "CPUS_MAX", "CPUS_MIN", "GREP_MATCHES_MAX", "GREP_PATTERN_MAX", "MEMORY_MAX_MB",
           "MEMORY_MIN_MB", "OPS", "OP_DOCS", "ORIGINAL_OPS", "PARAMS", "RECORDING_READ_MAX", "SEND_TEXT_MAX",
           "OpParams", "Param", "decode_params", "decode_request", "reference_markdown"]
