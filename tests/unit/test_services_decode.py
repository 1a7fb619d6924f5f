"""The example services' consumer loop waits out a Schema Registry that does not answer."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bridge.envelope import Event
from bridge.errors import DecodeError, TransientError
from services import common
from tests.support.memory import MemoryRecord

RECORD = MemoryRecord("out", 0, 3, b"k", b"\x00\x00\x00\x00\x07body", [], 1)
EVENT = Event(id="e-1", type="t", source="s", data={})


class Decoder:
    """Answers with ``outcomes`` in turn: an exception is raised, an event returned."""

    def __init__(self, *outcomes: Any) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0

    async def decode(self, record: Any) -> Event:
        self.calls += 1
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome  # type: ignore[no-any-return]


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common, "DECODE_RETRY_S", 0.001)


async def test_a_registry_that_does_not_answer_is_waited_for_not_skipped():
    decoder = Decoder(TransientError("down"), TransientError("down"), EVENT)
    event = await common._decode(decoder, RECORD, asyncio.Event())  # type: ignore[arg-type]
    assert event is EVENT
    assert decoder.calls == 3


async def test_a_record_that_is_no_event_is_skipped():
    decoder = Decoder(DecodeError("junk"))
    assert await common._decode(decoder, RECORD, asyncio.Event()) is None  # type: ignore[arg-type]


async def test_stopping_while_the_registry_is_away_gives_up_the_record():
    stop = asyncio.Event()
    stop.set()
    with pytest.raises(TransientError):
        await common._decode(Decoder(TransientError("down")), RECORD, stop)  # type: ignore[arg-type]
