"""The op reference, ``docs/ops.md``, rendered from the params classes (:mod:`convocate.common.ops.params`).

``python -m convocate.common.ops > docs/ops.md`` writes it; ``tests/test_ops.py`` checks the file is
current, so the reference cannot drift from what the agent decodes and the shell reads.
"""

from __future__ import annotations

from convocate.common.ops.base import PARAMS

#: What each op does and what it answers, keyed like :data:`~convocate.common.ops.params.OPS`.
OP_DOCS: dict[str, tuple[str, str]] = {name: (cls.SUMMARY, cls.RESULT.doc) for name, cls in PARAMS.items()}


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def reference_markdown() -> str:
    """The whole reference as Markdown: a table of ops, then each op's parameters (DESIGN-style tables)."""
    out = ["# RPC operations", "",
           "Generated from `convocate/common/ops/` by `python -m convocate.common.ops > docs/ops.md`;",
           "edit that package, not this file. The framing, the errors and their codes are DESIGN §3.",
           "(ext) marks an op the original protocol does not have. Every parameter is optional unless",
           "marked required; a field not listed is refused (`decode params: unknown field`).", ""]
    out += ["| op | what it does | result |", "| --- | --- | --- |"]
    for name, cls in PARAMS.items():
        ext = "" if cls.ORIGINAL else " (ext)"
        out.append(f"| [`{name}`](#{name}){ext} | {_cell(cls.SUMMARY)} | {_cell(cls.RESULT.doc)} |")
    for name, cls in PARAMS.items():
        out += ["", f"## {name}", "", cls.SUMMARY[:1].upper() + cls.SUMMARY[1:] + ".", ""]
        if cls.SPEC is None:
            out.append("Params: an open object, checked field by field by the agent's settings.")
        elif not cls.SPEC:
            out.append("No params.")
        else:
            out += ["| param | type | rule [default] |", "| --- | --- | --- |"]
            out += [f"| `{p.name}`{' (required)' if p.required else ''} | {p.kind} | {_cell(p.doc)} |"
                    for p in cls.SPEC]
    return "\n".join(out) + "\n"
