"""``python -m convocate.common.ops``: print the op reference (``docs/ops.md``)."""

import sys

from convocate.common.ops.reference import reference_markdown

sys.stdout.write(reference_markdown())
