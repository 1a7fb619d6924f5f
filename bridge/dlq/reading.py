"""Reading dead letters: pages of a DLQ listing, letters by offset, one letter in full.

Listings are pages: at most ``limit`` letters, at most ``scan_limit`` records
read for them, and an opaque cursor (the next offset of every partition) to go
on from. The redrive marks and copies of a page's letters come from streaming
passes that keep only what concerns the page, so the memory of a request does
not grow with the topics. A ``too_large_to_copy`` letter holds no record:
``show`` (and redrive) read the original from its topic at the letter's
coordinates, while retention keeps it there.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition

from bridge.codec import SchemaCatalog
from bridge.dlq.letters import (
    CopyIndex,
    Cursor,
    Letter,
    LetterRef,
    Origin,
    Original,
    check_dlq_topic,
    letter_of,
    mark_copies,
)
from bridge.dlq.marks import read_marks
from bridge.dlq.publisher import KEPT_HEADERS
from bridge.dlq.records import batches, reader, record_at
from bridge.envelope import ce_attribute
from bridge.errors import InvalidRequestError
from bridge.kafka.topics import topic_partitions
from bridge.settings import Settings

PAGE_LIMIT = 100
MAX_PAGE_LIMIT = 1000
SCAN_PER_LETTER = 10
MIN_SCAN = 1000
"""A page reads at most ``max(MIN_SCAN, SCAN_PER_LETTER * limit)`` records."""


@dataclass
class LetterPage:
    """One page of a DLQ listing."""

    letters: list[Letter]
    next_cursor: Cursor | None
    """Where the next page starts; None once every partition was read to its end."""
    scanned: int
    """Records read for this page (the filters may have matched fewer)."""


async def _earliest(
    settings: Settings, dlq_topic: str, origins: set[Origin], tenant: str | None
) -> dict[Origin, LetterRef]:
    """The first letter of each of ``origins`` in DLQ order, by a streaming pass."""
    found: dict[Origin, LetterRef] = {}
    if not origins:
        return found
    partitions = await topic_partitions(settings, dlq_topic)
    async with reader(settings, dlq_topic) as consumer:
        tps = [TopicPartition(dlq_topic, p) for p in partitions]
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        for tp in tps:
            if starts[tp] >= ends[tp]:
                continue
            async with contextlib.aclosing(batches(consumer, tp, starts[tp], ends[tp])) as it:
                async for records in it:
                    for record in records:
                        letter = letter_of(record)
                        origin = letter.origin
                        mine = tenant is None or letter.tenant == tenant
                        if mine and origin in origins and origin not in found:
                            found[origin] = letter.ref
                    if len(found) == len(origins):
                        return found
    return found


async def _settle(
    settings: Settings,
    dlq_topic: str,
    letters: list[Letter],
    tenant: str | None,
    index: CopyIndex | None = None,
    marks: bool = True,
) -> None:
    """Set ``copy_of`` (and ``redriven`` if ``marks``) on ``letters``."""
    origins = {x.origin for x in letters if x.origin is not None}
    if index is not None and index.exact and origins <= index.first.keys():
        earliest = {o: index.first[o] for o in origins}
    else:
        earliest = await _earliest(settings, dlq_topic, origins, tenant)
    mark_copies(letters, earliest)
    if marks:
        found = await read_marks(settings, dlq_topic, (x.ref for x in letters))
        for letter in letters:
            letter.redriven = found.get(letter.ref)


def _for_listing(letter: Letter) -> None:
    """Drop what a listing does not show: the value and all headers but the event's own."""
    letter.value = None
    letter.headers = [(k, v) for k, v in letter.headers if k.lower() in KEPT_HEADERS]


async def letter_page(
    settings: Settings,
    dlq_topic: str,
    *,
    cursor: Cursor | None = None,
    limit: int = PAGE_LIMIT,
    error_type: str | None = None,
    tenant: str | None = None,
    scan_limit: int | None = None,
    keep_values: bool = False,
    max_bytes: int | None = None,
    marks: bool = True,
    index: CopyIndex | None = None,
) -> LetterPage:
    """One page of a DLQ's letters in partition/offset order, from ``cursor`` on.

    At most ``limit`` letters, ``scan_limit`` records read (default
    ``max(MIN_SCAN, SCAN_PER_LETTER * limit)``) and, with ``keep_values``,
    ``max_bytes`` of values (the first letter always fits). Without
    ``keep_values`` the letters carry no value and only the event's CloudEvents
    headers (a listing shows no more).
    ``index``, carried from page to page of a reading from the start, spares
    the streaming pass that finds copies.
    """
    check_dlq_topic(dlq_topic)
    if limit < 1:
        raise InvalidRequestError("a page holds at least one letter")
    scan_limit = scan_limit or max(MIN_SCAN, SCAN_PER_LETTER * limit)
    partitions = await topic_partitions(settings, dlq_topic)
    letters: list[Letter] = []
    scanned = size = 0
    async with reader(settings, dlq_topic) as consumer:
        tps = [TopicPartition(dlq_topic, p) for p in partitions]
        ends = {tp.partition: o for tp, o in (await consumer.end_offsets(tps)).items()}
        starts = await consumer.beginning_offsets(tps)
        given = cursor.positions if cursor else {}
        positions = {tp.partition: max(starts[tp], given.get(tp.partition, 0)) for tp in tps}
        full = False
        for tp in tps:
            p = tp.partition
            if full or positions[p] >= ends[p]:
                continue
            async with contextlib.aclosing(batches(consumer, tp, positions[p], ends[p])) as it:
                async for records in it:
                    for record in records:
                        positions[p] = record.offset + 1
                        scanned += 1
                        letter = letter_of(record)
                        if tenant is None or letter.tenant == tenant:
                            if index is not None:
                                index.add(letter)
                            if error_type is None or letter.error_type == error_type:
                                if not keep_values:
                                    _for_listing(letter)
                                letters.append(letter)
                                size += letter.weight
                        full = (
                            len(letters) >= limit
                            or scanned >= scan_limit
                            or (max_bytes is not None and size >= max_bytes)
                        )
                        if full:
                            break
                    if full:
                        break
            if not full:
                positions[p] = ends[p]
    done = all(positions[p] >= ends[p] for p in positions)
    await _settle(settings, dlq_topic, letters, tenant, index, marks)
    return LetterPage(letters, None if done else Cursor(dlq_topic, positions), scanned)


async def iter_letters(
    settings: Settings,
    dlq_topic: str,
    *,
    error_type: str | None = None,
    tenant: str | None = None,
    limit: int = MAX_PAGE_LIMIT,
    keep_values: bool = False,
) -> AsyncIterator[list[Letter]]:
    """Every letter (filtered), a page at a time, each with its latest redrive if any."""
    cursor: Cursor | None = None
    index = CopyIndex()
    while True:
        page = await letter_page(
            settings, dlq_topic, cursor=cursor, limit=limit, error_type=error_type,
            tenant=tenant, keep_values=keep_values, index=index,
        )  # fmt: skip
        if page.letters:
            yield page.letters
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


async def dead_letters(
    settings: Settings,
    dlq_topic: str,
    *,
    error_type: str | None = None,
    refs: Sequence[LetterRef] = (),
    tenant: str | None = None,
) -> list[Letter]:
    """The letters of a DLQ topic, filtered, each with its latest redrive if any.

    All of them in one list: for small topics and tests; listings page
    (``letter_page``, ``iter_letters``). Unknown ``refs`` raise ``InvalidRequestError``.
    """
    if refs:
        letters = await letters_at(settings, dlq_topic, refs, tenant=tenant)
        return [x for x in letters if error_type is None or x.error_type == error_type]
    out: list[Letter] = []
    async for page in iter_letters(
        settings, dlq_topic, error_type=error_type, tenant=tenant, keep_values=True
    ):
        out.extend(page)
    return out


def _runs(offsets: Sequence[int], gap: int = 100) -> list[tuple[int, int]]:
    """Sorted offsets as ``[start, end)`` ranges worth reading in one go."""
    runs: list[tuple[int, int]] = []
    for offset in offsets:
        if runs and offset - runs[-1][1] < gap:
            runs[-1] = (runs[-1][0], offset + 1)
        else:
            runs.append((offset, offset + 1))
    return runs


async def letters_at(
    settings: Settings,
    dlq_topic: str,
    refs: Sequence[LetterRef],
    *,
    tenant: str | None = None,
    keep_values: bool = True,
    settle: bool = True,
    marks: bool = True,
) -> list[Letter]:
    """The letters at ``refs``, in DLQ order; ``InvalidRequestError`` naming any missing.

    A letter of another tenant than ``tenant`` is missing, exactly as an absent one.
    """
    check_dlq_topic(dlq_topic)
    partitions = set(await topic_partitions(settings, dlq_topic))
    wanted_set = set(refs)
    wanted = sorted(wanted_set)
    found: dict[LetterRef, Letter] = {}
    async with reader(settings, dlq_topic) as consumer:
        tps = [TopicPartition(dlq_topic, p) for p in sorted(partitions)]
        ends = {tp.partition: o for tp, o in (await consumer.end_offsets(tps)).items()}
        for p in sorted({r.partition for r in wanted} & partitions):
            offsets = [r.offset for r in wanted if r.partition == p and r.offset < ends[p]]
            for start, end in _runs(offsets):
                async for records in batches(consumer, TopicPartition(dlq_topic, p), start, end):
                    for record in records:
                        ref = LetterRef(p, record.offset)
                        if ref not in wanted_set:
                            continue
                        letter = letter_of(record)
                        if tenant is None or letter.tenant == tenant:
                            if not keep_values:
                                _for_listing(letter)
                            found[ref] = letter
    missing = [str(r) for r in wanted if r not in found]
    if missing:
        raise InvalidRequestError(
            f"{dlq_topic} has no dead letter at {', '.join(missing)} (PARTITION:OFFSET)"
        )
    letters = [found[r] for r in wanted]
    if settle:
        await _settle(settings, dlq_topic, letters, tenant, marks=marks)
    return letters


async def read_original(settings: Settings, letter: Letter) -> Original:
    """The record a ``too_large_to_copy`` letter points at, from its original topic."""
    topic, partition, offset = (
        letter.original_topic,
        letter.original_partition,
        letter.original_offset,
    )
    if not topic or partition is None or offset is None:
        return Original(
            topic, partition or 0, offset or 0, None, "no original coordinates recorded"
        )
    record, missing = await record_at(settings, topic, partition, offset)
    if record is None:
        return Original(topic, partition, offset, None, missing)
    # The letter names its record by key and event id (a letter that had to drop
    # them names it by coordinates alone).
    letter_id = ce_attribute(letter.headers, "id")
    if (letter.key is not None and record.key != letter.key) or (
        letter_id is not None and ce_attribute(record.headers, "id") != letter_id
    ):
        return Original(
            topic,
            partition,
            offset,
            None,
            f"{topic}[{partition}]@{offset} holds another record than the letter names",
        )
    return Original(topic, partition, offset, record)


async def show(
    settings: Settings,
    dlq_topic: str,
    ref: LetterRef,
    catalog: SchemaCatalog,
    *,
    tenant: str | None = None,
) -> dict[str, Any]:
    """One letter in full (``dlq show``); a ``too_large_to_copy`` one with its original."""
    (letter,) = await letters_at(settings, dlq_topic, [ref], tenant=tenant)
    original = None if letter.holds_record else await read_original(settings, letter)
    return letter.detail(catalog, original)
