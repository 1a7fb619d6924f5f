"""What the tests share, apart from the test files; every name is importable from here.

- ``waiting``: ``eventually`` and ``until``: wait on a condition with a deadline.
- ``events``: valid payloads of the repository's event types.
- ``routes``: routes configs from plain dicts, the recorder routes, routes files.
- ``kafka``: topics and partitions of a real broker; ``Services`` produces and reads back.
- ``temporal``: waiting on workflows the bridge starts, counting them in visibility,
  reading what a recorder noted.
- ``running``: a bridge, a worker, the HTTP API or any ASGI app running for a test.
- ``stack``: real Kafka and Temporal for a session or for one test.
- ``certs``: throw-away TLS material.
- ``memory``: the pipeline without Kafka or Temporal: topics in memory, a recording
  dispatcher, the live bridge and a replay over them.

The workflows the tests run stay in ``tests/workflows.py``: Temporal's sandbox imports
a workflow's module with its package, and this package imports the whole bridge.
"""

from tests.support.certs import Certs, make_certs
from tests.support.events import order_data, payment
from tests.support.kafka import Services, end_offsets, partitions, topic_exists
from tests.support.memory import (
    FakeIngress,
    MemoryKafka,
    MemoryRecord,
    RecordingDispatcher,
    consuming,
    memory_ingress,
    memory_settings,
    replay_runner,
    replaying,
)
from tests.support.routes import recorder_routes, routes_config, write_routes
from tests.support.running import (
    bridge_process,
    running_api,
    running_bridge,
    running_worker,
    serving,
)
from tests.support.stack import StackInfo, docker_answers, local_stack, session_stack
from tests.support.temporal import (
    count,
    count_is,
    received,
    runs_listed,
    runs_per_id,
    workflow_result,
)
from tests.support.waiting import eventually, until

__all__ = [
    "Certs",
    "FakeIngress",
    "MemoryKafka",
    "MemoryRecord",
    "RecordingDispatcher",
    "Services",
    "StackInfo",
    "bridge_process",
    "consuming",
    "count",
    "count_is",
    "docker_answers",
    "end_offsets",
    "eventually",
    "local_stack",
    "make_certs",
    "memory_ingress",
    "memory_settings",
    "order_data",
    "partitions",
    "payment",
    "received",
    "recorder_routes",
    "replay_runner",
    "replaying",
    "routes_config",
    "running_api",
    "running_bridge",
    "running_worker",
    "runs_listed",
    "runs_per_id",
    "serving",
    "session_stack",
    "topic_exists",
    "until",
    "workflow_result",
    "write_routes",
]
