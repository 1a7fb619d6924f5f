"""``python -m tests.chaos``: a chaos run of any size (``make chaos EVENTS=N SEED=S``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tests.chaos.harness import ChaosConfig, main_sync


def main() -> None:
    """Parse the sizes and fault counts, run, exit non-zero on any violation."""
    defaults = ChaosConfig()
    p = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    p.add_argument("--events", type=int, default=20000)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--rate", type=float, default=defaults.rate, help="records produced per second")
    p.add_argument("--bridge-kills", type=int, default=10)
    p.add_argument("--worker-kills", type=int, default=3)
    p.add_argument("--temporal-restarts", type=int, default=1)
    p.add_argument("--kafka-restarts", type=int, default=1)
    p.add_argument("--rebalances", type=int, default=4)
    p.add_argument("--outage-s", type=float, default=30.0)
    p.add_argument("--quiesce-timeout-s", type=float, default=3600.0)
    p.add_argument("--data-dir", type=Path, default=None, help="keep logs and state here")
    a = p.parse_args()
    config = ChaosConfig(
        events=a.events, seed=a.seed, rate=a.rate, bridge_kills=a.bridge_kills,
        worker_kills=a.worker_kills, temporal_restarts=a.temporal_restarts,
        kafka_restarts=a.kafka_restarts, rebalances=a.rebalances, outage_s=a.outage_s,
        quiesce_timeout_s=a.quiesce_timeout_s, data_dir=a.data_dir,
    )  # fmt: skip
    sys.exit(main_sync(config))


if __name__ == "__main__":
    main()
