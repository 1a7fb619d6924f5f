"""Standard streams that write everything they are given.

With ``PYTHONUNBUFFERED`` set (``ktb dev`` sets it for its processes, as container images
often do), ``sys.stdout`` and ``sys.stderr`` write their text straight to the file
descriptor. A pipe may take less than it is given (a short write), and the text layer
does not write the rest: it drops it, without an error (CPython's ``TextIOWrapper``
ignores the count its binary layer returns). ``ktb dlq show`` of a large letter was cut
short that way, exiting 0. A ``BufferedWriter`` between them writes until all of it is
out; line buffering keeps what the variable asks for, each line goes out as it is written.
"""

from __future__ import annotations

import io
import sys
from typing import TextIO


def whole(stream: TextIO) -> TextIO:
    """``stream``, or when it writes its text straight to an unbuffered file, a text stream
    on the same file that writes all of every write, flushed at each line (``stream`` is
    detached from the file: use the stream returned)."""
    raw = getattr(stream, "buffer", None)
    if not isinstance(stream, io.TextIOWrapper) or not isinstance(raw, io.RawIOBase):
        return stream
    encoding, errors = stream.encoding, stream.errors
    stream.flush()
    stream.detach()
    return io.TextIOWrapper(
        io.BufferedWriter(raw), encoding=encoding, errors=errors, line_buffering=True
    )


def whole_stdio() -> None:
    """Give ``sys.stdout`` and ``sys.stderr`` complete writes (``whole``), the originals
    (``sys.__stdout__``, ``sys.__stderr__``) too; a process's entry point calls it first."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        replaced = whole(stream)
        setattr(sys, name, replaced)
        if getattr(sys, f"__{name}__") is stream:
            setattr(sys, f"__{name}__", replaced)
