"""How many actions a process has in Temporal at once: fixed, or adapted to its latency.

The dispatcher takes a slot of its ``ActionLimit`` for every action it carries out,
live or replayed, and reports how long Temporal took to answer. Records past the
limit wait for a slot in arrival order; a record's key keeps its order because its
next record is not taken before. A record whose partition closes (a revoke, a stop,
a replay's end) while it waits gives up (``Abandoned``) when the next slot frees
instead of taking it: a revoke hands the partition over once the calls already in
Temporal are answered, not after every record that was waiting has gone in too.

With a fixed limit (``KTB_TEMPORAL_IN_FLIGHT=N``) that is all. The adaptive limit
(``auto``, the default) follows Temporal's answer times the way TCP Vegas follows
round trips, so the right concurrency for a server is found, not configured:

- ``floor`` is the fastest answer seen: a call with nothing queued ahead of it.
- Once per window (as many answers as the limit, at least ``WINDOW_MIN``), the
  median answer time of the window tells how many calls wait in Temporal's queues:
  ``limit * (1 - floor / median)``.
- Fewer than ``alpha`` waiting while the limit is in use: the limit grows (by a
  tenth while nothing queues at all, else by one); more than ``beta`` waiting: it
  shrinks by a tenth. A window with a call refused for overload (Temporal
  unavailable, throttling, a deadline missed) halves it. ``alpha``/``beta`` grow
  with the log of the limit, as in Vegas.
- The floor only falls, so sustained load never passes for a new normal. Should
  the limit sit at its minimum and still read a queue for ``STUCK_WINDOWS``
  windows, the server has become slower for good: the floor is measured afresh
  there, at the least concurrency the limit allows. A window that still answers
  calls of a deeper limit (a probe just taken back) does not count: their queue
  was that limit's.

While records wait for slots (a backlog), answer times alone cannot tell whether
more calls at once would be served faster: a server's completions can rise with
concurrency while its answer times grow, stay flat, or fall (the in-memory dev server,
by the first start to the last answer: 242 /s at 16 calls at once, 218 at 64, 186 at
256 in one run; README, Performance). So while saturated the limit also follows the
completion rate:

- Completions are counted over spans of at least ``PROBE_SPAN_S``, from the window
  after the one in which records started to wait (that one holds the time before).
- After ``PROBE_FIRST`` spans of a backlog at the current limit it tries
  ``PROBE_DEPTH`` times as many calls at once, measured against the span just before.
  A backlog's first span does not count toward that: it does not yet hold all that its
  events cost (a window's run starts when the window closes, a collector's workflow
  task comes after its signals). Whenever a probe moves the limit, the windows still
  answering calls of a deeper limit (draining) and the next one (as many answers as
  the limit: its pipeline filling and turning over once) are not counted.
- A try that does not complete ``PROBE_GAIN`` more a second than the span before it
  is taken back. One that does is checked against a span back at the limit it came
  from, then confirmed by a second span at the deeper limit, so that a server whose
  rate moves by itself within seconds does not pass for one that pays: the deeper
  limit stays only if both its spans beat both of the shallower limit's, and the next
  probe starts from it (Vegas does not shrink below it while records wait). A try
  that completes ``PROBE_SURE`` more, beyond what a server usually moves in a span,
  stays at once and the next try starts from its span: where depth pays that much
  (events into a few window collectors), a short backlog gets there in time.
  Otherwise probing rests for a number of spans: ``PROBE_REST``, doubling with each
  try in a row that did not pay (up to ``PROBE_REST_MAX``).
- How far the server moves by itself raises both bars: the largest move between two
  spans in a row that no probe moved the limit between (a backlog's first left out),
  or a try's two spans at the shallower limit, among the backlog's last
  ``PROBE_NOISE`` (a backlog's own, since as one ends its rate may fall as its work
  does, not the server's; so a backlog's first try has only the bars' least; the
  in-memory dev server: a fifth either way from one 2 s span to the next, now and then
  half; once +40 % as a try began, which passed for a gain by far; README,
  Performance). A try must beat the shallower limit by more than that to pass, and
  by twice that to stay unchecked. The price: where the server moves a fifth by
  itself, depth that pays less than a fifth per step is not told from its moves, and
  the limit stays where it is.
- Only a process that reads all of its consumer group's partitions probes
  (``set_share``). A member of a group of several shares Temporal with the others,
  and its own completions rise with its depth even where the server's do not: a
  deeper limit takes the others' part of the server's time. From its own answers a
  member cannot tell that from a gain (4x the calls beside one other member at the
  same depth: 1.6x its completions, as a server paying 1.6x would give; beside a
  deeper one, up to 4x), and each member's try would pay at the others' expense,
  theirs in turn, until the group sat at the deepest limit, where the in-memory dev
  server completes least (two bridges at 256 and 64 calls: 0.82 of the direct rate).
  A member that comes to share (a rebalance) takes a try back and forgets what tries
  earned; Vegas governs it alone, and the group's depth is its members' limits together.
- A window in which no record waited ends it all: Vegas alone governs again. An
  overload halves the limit as always and forgets what probes earned.

Below the server's knee the limit does not bind and latency is what the server
gives; past it, with no backlog, the limit keeps a handful of calls queued in
Temporal instead of hundreds; with one, as many as pay in completions, up to
``AUTO_MAXIMUM`` (each call in Temporal holds memory of its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import statistics
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from bridge.errors import Abandoned

WINDOW_MIN = 16
"""Fewest answers a window takes before the limit moves."""
STUCK_WINDOWS = 10
"""Windows at the minimum, still reading a queue, before the floor is measured afresh."""
DECREASE = 0.1
"""Share of the limit taken off per window while too many calls queue."""
GROWTH = 0.1
"""Share of the limit added per window while nothing queues."""
PROBE_SPAN_S = 2.0
"""Fewest seconds of completions a saturated limit's rate is measured over."""
PROBE_DEPTH = 4
"""How many times as many calls at once a saturated limit tries."""
PROBE_GAIN = 0.1
"""Least share by which a deeper limit's completion rate must beat the one before to stay
(more where the server moves more by itself)."""
PROBE_SURE = 0.4
"""Least share by which a deeper limit's completion rate beats the one before to stay
unchecked (more where the server moves more by itself)."""
PROBE_NOISE = 8
"""A backlog's latest pairs of spans whose difference tells how far the server's
completion rate moves by itself from one span to the next."""
PROBE_FIRST = 2
"""Spans of a backlog at the limit before its first try (the first is not its cost yet)."""
PROBE_REST = 4
"""Spans probing rests after a try that did not pay, the first of a backlog or the
first after one that paid."""
PROBE_REST_MAX = 32
"""Most spans probing rests after tries that did not pay."""
AUTO_MINIMUM = 16
"""Fewest actions the adaptive limit allows in Temporal at once (fewer only where
``max_in_flight`` is lower)."""
AUTO_MAXIMUM = 256
"""Most actions the adaptive limit puts in Temporal at once. Each call in Temporal holds
about 40 KiB of the process (its request, the SDK's stream): a bridge with 10,000 records
buffered peaked at 182 MiB with 16 calls at once, 189-191 MiB with 256 and 223 MiB with
1,024 (README, Performance), against a budget of 200 MiB."""


class ActionLimit:
    """A gate of ``limit`` slots for actions in Temporal, fixed or adaptive (module doc)."""

    def __init__(
        self,
        fixed: int | None = None,
        *,
        minimum: int = AUTO_MINIMUM,
        maximum: int = AUTO_MAXIMUM,
        initial: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if fixed is not None and fixed < 1:
            raise ValueError(f"a fixed limit must be at least 1, not {fixed}")
        if not 1 <= minimum <= maximum:
            raise ValueError(f"need 1 <= minimum <= maximum, not {minimum} and {maximum}")
        self.adaptive = fixed is None
        self.minimum = minimum
        self.maximum = maximum
        self._limit = float(fixed if fixed is not None else (initial or minimum))
        self._limit = min(max(self._limit, 1.0), float(maximum if self.adaptive else self._limit))
        self.in_flight = 0
        """Actions holding a slot now."""
        self._waiters: deque[tuple[asyncio.Future[None], asyncio.Event | None]] = deque()
        """Waiting actions in arrival order, each with its partition's ``closed`` event."""
        self._samples: list[float] = []
        self._peak = 0
        self._failed = False
        self.floor: float | None = None
        """The lowest latency seen lately (seconds), ``None`` before the first window."""
        self._stuck = 0
        self._clock = clock
        self._window_start = clock()
        self._waited = False
        # The completion-rate probe while records wait (module doc).
        self._span_answers = 0
        self._span_s = 0.0
        self._last_rate: float | None = None
        """The completion rate of the span before, unless a probe moved the limit since or
        it was a backlog's first."""
        self._spans = 0
        """Spans counted in this backlog."""
        self._moves: deque[float] = deque(maxlen=PROBE_NOISE)
        """How far the rate moved by itself between spans no probe moved the limit between
        (answer times may have, by a tenth), lately in this backlog (``log`` of the ratio,
        either way)."""
        self._base: tuple[float, float] | None = None
        """While a probe runs: the limit it came from and that limit's completion rate."""
        self._deep: tuple[float, float] | None = None
        """While a try that paid is checked and confirmed: the deeper limit and its try's
        completion rate."""
        self._checked: float | None = None
        """While a try that passed its check is confirmed: the check's completion rate."""
        self._settled = False
        """Whether the next window counts toward a span: not the first one with records
        waiting (it holds the time before they waited, or before the process had any),
        nor, after a probe moved the limit, those still answering calls of a deeper
        limit and the first after them (the one in which its pipeline fills)."""
        self._earned = 0.0
        """The deepest limit a probe found paying, while records keep waiting."""
        self._rest = PROBE_FIRST - 1
        self._rest_next = PROBE_REST
        self.share = 1.0
        """The part of its consumer group's partitions this process reads (``set_share``)."""

    @property
    def limit(self) -> int:
        """Slots there are now."""
        return max(1, int(self._limit))

    @property
    def waiting(self) -> int:
        """Actions waiting for a slot."""
        return len(self._waiters)

    @asynccontextmanager
    async def slot(self, closed: asyncio.Event | None = None) -> AsyncIterator[None]:
        """Hold a slot for one action; on leaving, report its latency (or its failure).

        The body reports through ``observe`` what it measured: only an answer from
        Temporal is a latency sample, and a rate-limit wait or a decode is not.
        ``Abandoned`` instead if ``closed`` (the record's partition closing) is set
        before the action has its slot.
        """
        await self.acquire(closed)
        try:
            yield
        finally:
            self.release()

    async def acquire(self, closed: asyncio.Event | None = None) -> None:
        """Wait for a slot, in arrival order; ``Abandoned`` if ``closed`` is set before
        one is free for it (checked as slots free, so a closed partition's waiting
        records give up together at the next answer from Temporal)."""
        if closed is not None and closed.is_set():
            raise Abandoned("partition closed before the action had a slot in Temporal")
        if not self._waiters and self.in_flight < self.limit:
            self._take()
            return
        self._waited = True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((waiter, closed))
        try:
            await waiter
        except BaseException:
            if not waiter.done() or waiter.cancelled():
                with contextlib.suppress(ValueError):  # _wake drops cancelled ones too
                    self._waiters.remove((waiter, closed))
            elif waiter.exception() is None:
                self.release()  # granted while being cancelled: hand it on
            raise  # else given up (Abandoned) in _wake: out of the line, holding no slot

    def release(self) -> None:
        """Give a slot back and hand free slots to the oldest waiters."""
        self.in_flight -= 1
        self._wake()

    def set_share(self, held: int, total: int) -> None:
        """This process reads ``held`` of the ``total`` partitions of its consumer group's
        topics; anything but ``0 < held < total`` (all of them, none yet, metadata not
        known) counts as the whole. Only the whole probes (module doc): reading a part,
        a try in progress goes back and what tries earned lapses."""
        self.share = held / total if 0 < held < total else 1.0
        if self.share < 1:
            if self._base is not None:
                self._move(self._base[0])
            self._unsaturated()

    def observe(self, seconds: float) -> None:
        """One answer from Temporal that took ``seconds``."""
        if not self.adaptive:
            return
        self._samples.append(seconds)
        if len(self._samples) >= max(WINDOW_MIN, self.limit):
            self._adapt()

    def failed(self) -> None:
        """A call was refused for overload: Temporal unavailable, throttling, or a
        deadline missed."""
        if self.adaptive:
            self._failed = True
            self._samples.append(math.nan)
            if len(self._samples) >= max(WINDOW_MIN, self.limit):
                self._adapt()

    def _take(self) -> None:
        self.in_flight += 1
        self._peak = max(self._peak, self.in_flight)

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self.limit:
            waiter, closed = self._waiters.popleft()
            if waiter.done():
                continue  # cancelled while waiting
            if closed is not None and closed.is_set():
                waiter.set_exception(
                    Abandoned("partition closed while the action waited for a slot in Temporal")
                )
                continue
            self._take()
            waiter.set_result(None)

    def _adapt(self) -> None:
        samples = [s for s in self._samples if not math.isnan(s)]
        failed, peak, limit = self._failed, self._peak, self._limit
        now = self._clock()
        answered, elapsed = len(self._samples), now - self._window_start
        saturated = self._waited or bool(self._waiters)
        self._samples, self._failed, self._peak = [], False, self.in_flight
        self._waited, self._window_start = False, now
        if failed:
            self._unsaturated()
            self._set(limit / 2)
            return
        if not saturated:
            self._unsaturated()
        elif self._probe(answered, elapsed, limit, peak):
            return
        if not samples:
            return
        median = statistics.median(samples)
        if self.floor is None or median < self.floor:
            self.floor = median
        queued = limit * (1 - self.floor / median) if median > 0 else 0.0
        scale = math.log10(max(limit, 10.0))
        alpha, beta = 3 * scale, 6 * scale
        if queued > beta:
            least = max(float(self.minimum), self._earned)
            if limit > least:
                self._stuck = 0
                self._set(max(limit * (1 - DECREASE), least))
                return
            if self._earned:
                return  # held by a probe that paid: not the server slower for good
            if peak > limit:
                return  # calls of a deeper limit still draining: their queue, not this one's
            self._stuck += 1
            if self._stuck >= STUCK_WINDOWS:
                self.floor, self._stuck = median, 0
            return
        self._stuck = 0
        if queued < alpha and peak >= 0.9 * limit:
            self._set(limit + (max(1.0, limit * GROWTH) if queued < 1 else 1.0))

    def _probe(self, answered: int, elapsed: float, limit: float, peak: int) -> bool:
        """One saturated window's share of the completion-rate probe (module doc); True
        while a probe holds the limit, so the answer times leave it alone."""
        probing = self._base is not None
        if not self._settled:
            self._settled = peak <= limit  # past the calls of a deeper limit draining
            return probing
        self._span_answers += answered
        self._span_s += elapsed
        if self._span_s < PROBE_SPAN_S:
            return probing
        rate = self._span_answers / self._span_s
        self._span_answers, self._span_s = 0, 0.0
        gain, sure = self._thresholds(rate)
        if self._base is not None:
            base_limit, base_rate = self._base
            if self._deep is None:  # the span of the try
                if rate < base_rate * (1 + gain):
                    return self._take_back(base_limit)
                if rate >= base_rate * (1 + sure):
                    return self._keep(limit, rate)
                self._deep = (limit, rate)
                self._move(base_limit)  # the check, back where it came from
                return True
            deep_limit, deep_rate = self._deep
            if self._checked is None:  # the check
                if deep_rate < max(rate, base_rate) * (1 + gain):
                    return self._take_back(base_limit)
                self._checked = rate
                self._move(deep_limit)
                return True
            if rate < max(self._checked, base_rate) * (1 + gain):  # the confirmation
                return self._take_back(base_limit)
            return self._keep(deep_limit)
        if self._rest > 0:
            self._rest -= 1
            return False
        if limit >= self.maximum or self.share < 1:
            return False
        self._base = (limit, rate)
        self._move(limit * PROBE_DEPTH)
        return True

    def _thresholds(self, rate: float) -> tuple[float, float]:
        """Note how far the server moved by itself up to this span's ``rate``: from the
        span before if no probe moved the limit since (a backlog's first holds less than
        its cost), or, in a try's check, from the span the try started from. The shares
        by which a try must beat the spans at its shallower limit to pass, and to stay
        unchecked: at least as far as the server moved by itself lately, and twice that."""
        if self._last_rate is not None:
            self._moves.append(abs(math.log(rate / self._last_rate)))
        elif self._base is not None and self._deep is not None and self._checked is None:
            self._moves.append(abs(math.log(rate / self._base[1])))
        self._last_rate = rate if self._spans else None
        self._spans += 1
        drift = math.exp(max(self._moves, default=0.0)) - 1
        return max(PROBE_GAIN, drift), max(PROBE_SURE, 2 * drift)

    def _keep(self, limit: float, rate: float | None = None) -> bool:
        """A try that paid: ``limit``, where its last span ran, stays. With its span's
        ``rate`` (a try that paid by far, its pipeline full already), the next try starts
        from it at once."""
        self._deep = self._checked = None
        self._earned, self._rest_next = limit, PROBE_REST
        if rate is not None and limit < self.maximum:
            self._base = (limit, rate)
            self._move(limit * PROBE_DEPTH)
            return True
        self._base = None  # the limit stays as it is, and its spans go on
        return True

    def _take_back(self, limit: float) -> bool:
        """A try that did not pay: back to ``limit``, and probing rests."""
        self._base = self._deep = self._checked = None
        self._move(limit)
        self._rest = self._rest_next
        self._rest_next = min(2 * self._rest_next, PROBE_REST_MAX)
        return True

    def _move(self, limit: float) -> None:
        """The probe sets the limit; its span counts from the calls at that limit."""
        self._settled, self._last_rate = False, None
        self._set(limit)

    def _unsaturated(self) -> None:
        """No record waited (or an overload): the probe ends and what it earned lapses."""
        self._span_answers, self._span_s, self._last_rate, self._spans = 0, 0.0, None, 0
        self._base, self._deep, self._settled, self._earned = None, None, False, 0.0
        self._checked = None
        self._moves.clear()
        self._rest, self._rest_next = PROBE_FIRST - 1, PROBE_REST

    def _set(self, limit: float) -> None:
        self._limit = min(max(limit, float(self.minimum)), float(self.maximum))
        self._wake()
