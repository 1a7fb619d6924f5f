"""The Temporal floor under the saga: a bare workflow of three no-op activities.

The workflow runs its activities one after another, each on a task queue of its
own (as the order saga does), with the workers in this process and no Kafka or
bridge anywhere. Its latency at a given start rate is what the dev server and
the SDK cost before ktb does anything::

    .venv/bin/python -m bench.bare_saga --rate 1 --count 20
    .venv/bin/python -m bench.bare_saga --rate 5 --count 50

Temporal comes from ``KTB_TEMPORAL_ADDRESS`` (default ``localhost:7233``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
import uuid
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.worker import Worker

with workflow.unsafe.imports_passed_through():
    from bench.common import percentile
    from bridge.settings import Settings
    from bridge.temporal.client import connect_temporal

STEPS = ("bare-a", "bare-b", "bare-c")


@activity.defn(name="bare.step")
async def step(value: str) -> str:
    """Does nothing: the cost measured is the round trip."""
    return value


@workflow.defn(name="BareSaga")
class BareSaga:
    """Three activities in sequence, each on its own task queue."""

    @workflow.run
    async def run(self, run: str) -> str:
        for queue in STEPS:
            await workflow.execute_activity(
                "bare.step", run, task_queue=f"{queue}-{run}",
                start_to_close_timeout=timedelta(seconds=30),
            )  # fmt: skip
        return run


async def measure(settings: Settings, rate: float, count: int) -> list[float]:
    """Start ``count`` workflows at ``rate`` per second; each one's start-to-result ms."""
    client = await connect_temporal(settings)
    run = uuid.uuid4().hex[:8]
    workers = [Worker(client, task_queue=f"bare-wf-{run}", workflows=[BareSaga])]
    workers += [Worker(client, task_queue=f"{q}-{run}", activities=[step]) for q in STEPS]
    async with contextlib.AsyncExitStack() as running:
        for worker in workers:
            await running.enter_async_context(worker)
        await asyncio.sleep(1)  # the pollers are waiting before the first start
        latencies: list[float] = []

        async def one(n: int) -> None:
            began = time.perf_counter()
            await client.execute_workflow(
                BareSaga.run, run, id=f"bare-{run}-{n}", task_queue=f"bare-wf-{run}"
            )
            latencies.append((time.perf_counter() - began) * 1000)

        started = time.perf_counter()
        tasks = []
        for n in range(count):
            await asyncio.sleep(max(0.0, started + n / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(one(n)))
        await asyncio.gather(*tasks)
    return latencies


def main() -> None:
    """Parse arguments, measure, print p50/p90/max."""
    parser = argparse.ArgumentParser(prog="python -m bench.bare_saga", description=__doc__)
    parser.add_argument("--rate", type=float, default=5.0, help="workflows started per second")
    parser.add_argument("--count", type=int, default=50, help="workflows measured")
    args = parser.parse_args()
    latencies = asyncio.run(measure(Settings(), args.rate, args.count))
    print(
        f"bare saga (3 no-op activities, 4 task queues) at {args.rate:g}/s over {args.count}: "
        f"p50 {percentile(latencies, 50):.0f} ms, p90 {percentile(latencies, 90):.0f} ms, "
        f"max {max(latencies):.0f} ms"
    )


if __name__ == "__main__":
    main()
