"""Dead letters: writing them, reading them back, and redriving them.

A record the bridge cannot act on goes to ``<topic>.dlq`` with the original key,
value and headers plus ``ktb_*`` headers saying why (``publisher``). Letters are
read back as ``Letter`` values (``letters``), listed a page at a time or shown one
in full (``reading``, over the group-less reads of ``records``), and redriven to
their original topics in Kafka transactions (``redriving``) that mark each
republished letter on ``ktb.redrives`` (``marks``).
"""

from bridge.dlq.letters import (
    CopyIndex,
    Cursor,
    Letter,
    LetterRef,
    Original,
    Redriven,
    letter_of,
    mark_copies,
)
from bridge.dlq.publisher import (
    ERROR_HEADERS,
    ERROR_MESSAGE,
    ERROR_TYPE,
    FAILED_AT,
    LETTER_HEADERS,
    MAX_MESSAGE_BYTES,
    ORIGINAL_ERROR_MESSAGE,
    ORIGINAL_ERROR_TYPE,
    ORIGINAL_OFFSET,
    ORIGINAL_PARTITION,
    ORIGINAL_SIZE,
    ORIGINAL_TOPIC,
    REDRIVE_COUNT,
    REDRIVE_OF,
    SUFFIX,
    TOO_LARGE_TO_COPY,
    DeadLetterPublisher,
    WrittenLetter,
    bounded,
    dlq_topic,
)
from bridge.dlq.reading import (
    MAX_PAGE_LIMIT,
    PAGE_LIMIT,
    LetterPage,
    dead_letters,
    iter_letters,
    letter_page,
    letters_at,
    read_original,
    show,
)
from bridge.dlq.redriving import REDRIVE_CHUNK_BYTES, REDRIVES_TOPIC, RedriveReport, redrive

# Grouped by role, sorted within each group (the groups read better than one sorted list).
__all__ = [  # noqa: RUF022
    # writing letters: header names and the publisher
    "ERROR_HEADERS",
    "ERROR_MESSAGE",
    "ERROR_TYPE",
    "FAILED_AT",
    "LETTER_HEADERS",
    "MAX_MESSAGE_BYTES",
    "ORIGINAL_ERROR_MESSAGE",
    "ORIGINAL_ERROR_TYPE",
    "ORIGINAL_OFFSET",
    "ORIGINAL_PARTITION",
    "ORIGINAL_SIZE",
    "ORIGINAL_TOPIC",
    "REDRIVE_COUNT",
    "REDRIVE_OF",
    "SUFFIX",
    "TOO_LARGE_TO_COPY",
    "DeadLetterPublisher",
    "WrittenLetter",
    "bounded",
    "dlq_topic",
    # letters read back
    "CopyIndex",
    "Cursor",
    "Letter",
    "LetterRef",
    "Original",
    "Redriven",
    "letter_of",
    "mark_copies",
    # reading
    "MAX_PAGE_LIMIT",
    "PAGE_LIMIT",
    "LetterPage",
    "dead_letters",
    "iter_letters",
    "letter_page",
    "letters_at",
    "read_original",
    "show",
    # redriving
    "REDRIVES_TOPIC",
    "REDRIVE_CHUNK_BYTES",
    "RedriveReport",
    "redrive",
]
