"""Which values may travel inside a Temporal visibility query, and how they are written.

The API and the replay build list filters such as ``KtbBusinessKey = '<value>'``
and ``WorkflowId IN ('<id>', ...)`` from filters, ids and event data that others
supply. Temporal's query language has no escape that every visibility store
honours, and the stores choke on some characters: a NUL cuts the SQL text short
(the dev server's SQLite answers ``UNAVAILABLE``, "SQL logic error: unrecognized
token", as if it were down), a quote ends the literal. So a value is refused
before any query is built unless ``is_safe`` holds: no control character
(Unicode category Cc, U+0000-U+001F and U+007F-U+009F), no quote or backslash,
at most ``MAX_CHARS`` characters. ``PATTERN`` is the same rule for OpenAPI
parameter declarations (with ``max_length``), so the API refuses such values
with a 422 at its edge.
"""

from __future__ import annotations

import re

from bridge.errors import UnsafeValueError

MAX_CHARS = 1000
"""Longest value accepted (Temporal's own limit on workflow ids, ``limit.maxIDLength``)."""

_UNSAFE_CLASS = r"\x00-\x1f\x7f-\x9f'\"\\"
PATTERN = rf"^[^{_UNSAFE_CLASS}]*$"
"""The rule of ``is_safe`` without the length bound, as a JSON-schema/OpenAPI pattern."""
_UNSAFE = re.compile(rf"[{_UNSAFE_CLASS}]")


def is_safe(value: str) -> bool:
    """Whether ``value`` can be written as a visibility query string literal."""
    return len(value) <= MAX_CHARS and _UNSAFE.search(value) is None


def literal(value: str) -> str:
    """``value`` as a query string literal; ``UnsafeValueError`` unless ``is_safe``."""
    if len(value) > MAX_CHARS:
        raise UnsafeValueError(f"longer than {MAX_CHARS} characters")
    found = _UNSAFE.search(value)
    if found is not None:
        raise UnsafeValueError(
            f"control characters, quotes and backslashes are not allowed (U+{ord(found[0]):04X})"
        )
    return f"'{value}'"
