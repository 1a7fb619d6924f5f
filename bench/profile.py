"""Where a bridge process spends its CPU while starting workflows: py-spy, summarised by stage.

    python -m bench.profile                  # 3,000 start events, own stack unless KTB_* set
    python -m bench.profile --events 10000 --raw /tmp/bridge.txt   # keep the raw stacks
    python -m bench.profile --paced 60       # events arrive at 60/s, as in the latency scenario

Events are produced first (or, with ``--paced``, at that rate while the bridge runs:
each record then travels alone, as below the server's ceiling); a bridge process
(``ktb bridge``) starts their workflows while ``py-spy record`` samples it. Each
sampled Python stack is put in the first stage it touches (the Temporal SDK,
provenance, logging, decoding, routing, ...), and the CPU time of the process's main
thread and of its other threads (the Temporal SDK's Rust core among them) is given
per event. The bridge runs on uvloop, whose loop is C code: a main-thread stack that
ends in the loop's run call has no Python frame to tell its wait in ``epoll`` from its
own work (socket reads and writes, callbacks, timers). Such samples count as waiting:
sampled with ``--native`` (C frames too; py-spy then stops the process at each
sample), 241 of 250 of them were in ``epoll_pwait``; ``--native`` tells the two apart
exactly.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

import psutil

from bench.bridge_process import BridgeProcess
from bench.common import (
    create_topic,
    open_loop,
    order_records,
    produce_all,
    route_query,
    span_rate,
    start_route,
    start_times,
    write_routes,
)
from bench.run import services
from bridge import kafka
from bridge.codec import SchemaCatalog
from bridge.temporal.client import connect_temporal

# (stage, substring of a frame); the first rule any frame of a stack matches wins.
STAGES = (
    ("Temporal SDK: build request, convert payloads, RPC", "temporalio/"),
    ("provenance record: JSON + Kafka produce", "bridge/provenance.py"),
    ("logging: one JSON line per event", "logging/__init__"),
    ("tracing", "opentelemetry"),
    ("decode: CloudEvent headers + Avro", "bridge/envelope.py"),
    ("route: conditions, templates, action", "bridge/routes.py"),
    ("metrics", "prometheus_client"),
    ("Kafka consumer: fetch, records", "aiokafka/consumer"),
    ("Kafka client: produce, connections", "aiokafka/"),
    ("bridge consumer: scheduling, commits", "bridge/consumer.py"),
    ("ingress and dispatch glue", "bridge/"),
)


ROOT_FRAMES = ("bridge/__main__.py", "bridge/cli/", "bridge/wiring.py", "runpy", "typer/",
               "click/", "asyncio/runners.py", "<module>")  # fmt: skip
WAITING = "waiting (the loop for its sockets, a thread for a lock)"
BLOCKING_CALLS = (
    "epoll_wait", "epoll_pwait", "PyThread_acquire_lock_timed", "pthread_cond_wait",
    "pthread_cond_timedwait",
)  # fmt: skip
"""Native frames (``--native``) of a thread blocked: a loop waiting for its sockets, a
Python thread for a lock, a thread of the SDK's Rust core for the GIL. A blocking
call's own frames below them are often bare addresses, so the last few are looked at."""


def stage_of(stack: str) -> str:
    """The stage one sampled stack belongs to.

    Every stack starts in ``bridge/cli/`` (and ``bridge/wiring.py``, which runs the
    consumer); those start-up frames are left out
    before the rules are applied, so a stack is the stage of what it is doing.
    """
    frames = [f for f in stack.split(";") if f and not any(r in f for r in ROOT_FRAMES)]
    inner = ";".join(frames)
    if any(frame.startswith(BLOCKING_CALLS) for frame in frames[-3:]):
        return WAITING  # sampled with --native: a thread blocked
    stage = next((name for name, part in STAGES if part in inner), None)
    if stage is not None:
        return stage
    if "selectors.py" in inner:
        return WAITING
    if "Thread.run " in inner:
        return "other Python threads"
    if "asyncio/runners.py" in stack:
        # The main thread: the loop's own frames (Python, or uvloop's C with --native).
        # With none above the run call, uvloop is in C, and without native frames that
        # is nearly always its wait in epoll (module docstring).
        return "event loop" if frames else WAITING
    if any(".py:" in frame for frame in frames):
        return "other Python threads"
    return "native threads (no Python frames)"


def summarise(raw: Path) -> list[tuple[str, float]]:
    """Share of the busy samples (not waiting in select) per stage, largest first."""
    counts: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if not number.isdigit():
            continue
        counts[stage_of(stack)] += int(number)
    busy = sum(n for name, n in counts.items() if name != WAITING) or 1
    return [(name, n / busy) for name, n in counts.most_common() if name != WAITING]


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of ``pid``'s main thread and of all its other threads, each split into
    user and system (kernel) time: ``{"main user": ..., "main system": ..., "other
    user": ..., "other system": ...}``."""
    spent = dict.fromkeys(("main user", "main system", "other user", "other system"), 0.0)
    for thread in psutil.Process(pid).threads():
        which = "main" if thread.id == pid else "other"
        spent[f"{which} user"] += thread.user_time
        spent[f"{which} system"] += thread.system_time
    return spent


def cpu_line(before: dict[str, float], after: dict[str, float], events: int) -> str:
    """Microseconds of CPU per event of the main thread and of the other threads, each
    with its share in the kernel (system calls: sockets, wake-ups)."""
    us = {k: (after[k] - before[k]) / max(1, events) * 1e6 for k in before}
    parts = []
    for which, key in (("main thread", "main"), ("other threads", "other")):
        user, system = us[f"{key} user"], us[f"{key} system"]
        parts.append(f"{which} {user + system:,.0f} us ({system:,.0f} us of it in the kernel)")
    return "bridge CPU per event: " + ", ".join(parts)


async def profile(
    events: int, raw: Path, rate: int, paced: float | None = None, native: bool = False
) -> None:
    """Run the bridge under py-spy on ``events`` start events (preloaded, or produced at
    ``paced`` per second after a warm-up event) and print the stages; ``native`` samples
    C frames too, stopping the process at each sample (py-spy cannot read them
    otherwise), which slows the bridge but tells the loop's waits from its work."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with tempfile.TemporaryDirectory(prefix="ktb-bench-profile-") as tmp:
        work = Path(tmp)
        async with services(work, True) as (settings, stack, _):
            print(f"stack: {stack}")
            client = await connect_temporal(settings)
            catalog = SchemaCatalog.from_dir(settings.schemas_dir)
            uid = "p" + work.name[-7:].replace("_", "")
            topic = f"bench-profile-{uid}"
            await create_topic(settings, topic)
            records = order_records(catalog, uid, events + 1)
            await produce_all(settings, topic, records[:1] if paced else records[1:])
            routes = write_routes(work / "routes.yaml", [start_route(topic, uid)])
            bridge = BridgeProcess(
                settings.model_copy(update={"group_id": f"bench-{uid}"}),
                routes,
                work / "bridge.log",
            )
            await bridge.start()
            query = route_query(uid)
            producer = kafka.producer(settings, linger_ms=0) if paced else None
            if producer is not None:
                await producer.start()
            try:
                while not (await client.count_workflows(query)).count:
                    bridge.check()
                    await asyncio.sleep(0.05)
                before = thread_cpu(bridge.pid)
                sampler = await asyncio.create_subprocess_exec(
                    spy, "record", "--pid", str(bridge.pid), "--rate", str(rate),
                    "--format", "raw", "--output", str(raw),
                    "--native" if native else "--nonblocking",
                )  # fmt: skip
                if producer is not None and paced:
                    await open_loop(producer, topic, records[1:], paced)
                times = await start_times(
                    client, query, events + bool(paced), timeout=120 + events / 20
                )
                after = thread_cpu(bridge.pid)
                sampler.send_signal(2)  # SIGINT: py-spy writes what it sampled and exits
                await sampler.wait()
            finally:
                if producer is not None:
                    await producer.stop()
                await bridge.stop()
    # Paced: the warm-up event's workflow started before the CPU was first read.
    measured = sorted(times.values())[bool(paced) :]
    done = len(measured)
    print(f"{done:,} workflows started at {span_rate(measured):,.0f}/s")
    print(cpu_line(before, after, done))
    print("share of the busy samples (waits left out):")
    for name, share in summarise(raw):
        print(f"  {share * 100:5.1f} %  {name}")
    print(f"raw stacks (flamegraph.pl input): {raw}")


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and profile."""
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--events", type=int, default=3000, help="start events (default 3,000)")
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument(
        "--raw", type=Path, default=Path(tempfile.gettempdir()) / "ktb-bridge-profile.txt"
    )
    parser.add_argument(
        "--paced", type=float, default=None, metavar="PER_S",
        help="produce the events at this rate while the bridge runs (default: all first)",
    )  # fmt: skip
    parser.add_argument(
        "--native", action="store_true",
        help="sample C frames too (py-spy stops the bridge at each sample: slower)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    asyncio.run(profile(args.events, args.raw, args.rate, args.paced, args.native))


if __name__ == "__main__":
    main()
