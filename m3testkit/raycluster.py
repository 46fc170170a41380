"""A small local Ray cluster for tests and benchmarks: loopback only, no dashboard, a small object store."""

from __future__ import annotations

import os
from typing import Any


def start(num_cpus: int | None = None) -> Any:
    """Start (or reuse) a local Ray cluster on 127.0.0.1 with `num_cpus` CPUs (default: all); returns `ray`."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report from an offline machine
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False, _node_ip_address="127.0.0.1",
                 object_store_memory=256 * 2**20, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
    return ray
