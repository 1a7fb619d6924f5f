"""Standard streams that write all they are given, even when the file takes less per write."""

from __future__ import annotations

import io
import os
import subprocess
import sys

from bridge.settings import REPO_ROOT
from bridge.stdio import whole


class ShortWrites(io.RawIOBase):
    """A file that takes at most ``most`` bytes per write, as a pipe may."""

    def __init__(self, most: int) -> None:
        self.most = most
        self.data = bytearray()
        self.writes = 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # type: ignore[no-untyped-def, override]
        taken = bytes(b[: self.most])
        self.data += taken
        self.writes += 1
        return len(taken)


def unbuffered(raw: io.RawIOBase) -> io.TextIOWrapper:
    """A text stream as ``PYTHONUNBUFFERED`` makes ``sys.stdout``: straight to the file."""
    return io.TextIOWrapper(raw, encoding="utf-8", errors="strict", write_through=True)  # type: ignore[type-var]


def test_a_stream_on_an_unbuffered_file_writes_all_of_a_large_text() -> None:
    raw = ShortWrites(65536)
    stream = whole(unbuffered(raw))
    text = '{"customer_id": "' + "c" * 1_200_000 + '"}\n'
    stream.write(text)
    stream.flush()
    assert raw.data.decode() == text
    assert raw.writes >= len(text) // 65536


def test_each_line_goes_out_as_it_is_written() -> None:
    raw = ShortWrites(7)
    stream = whole(unbuffered(raw))
    stream.write("first line\n")
    assert raw.data == b"first line\n"  # no flush asked for
    stream.write("no end yet")
    stream.write(" ... now\n")
    assert raw.data == b"first line\nno end yet ... now\n"


def test_the_encoding_and_error_handling_stay() -> None:
    raw = ShortWrites(3)
    stream = whole(
        io.TextIOWrapper(raw, encoding="latin-1", errors="replace", write_through=True)  # type: ignore[type-var]
    )
    assert (stream.encoding, stream.errors) == ("latin-1", "replace")
    stream.write("é€\n")
    assert raw.data == "é?\n".encode("latin-1")


def test_streams_that_already_buffer_are_left_as_they_are() -> None:
    buffered = io.TextIOWrapper(io.BufferedWriter(ShortWrites(5)), encoding="utf-8")
    assert whole(buffered) is buffered
    text = io.StringIO()
    assert whole(text) is text


def test_ktb_writes_a_large_answer_whole_under_pythonunbuffered() -> None:
    # The `ktb` entry point itself, in a process of its own with the variable set: its
    # standard streams end up buffered below the text layer, and a large line arrives.
    code = (
        "import importlib, sys\n"
        "cli = importlib.import_module('bridge.cli.main')\n"
        "def app():\n"
        "    layers = type(sys.stdout.buffer).__name__, type(sys.stderr.buffer).__name__\n"
        "    print(*layers, 'x' * 2_000_000)\n"
        "cli.app = app\n"
        "cli.main()\n"
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b"BufferedWriter BufferedWriter " + b"x" * 2_000_000 + b"\n"
