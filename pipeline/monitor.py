"""The machine's CPU and memory, sampled while a fit runs: MLflow's system metrics, without MLflow.

MLflow records system metrics from a thread bound to an active run, but the train stage holds no run
(the evaluate stage logs it, pipeline/evaluate.py). So the train stage samples with psutil, the library
MLflow's own monitor uses, into the run record, under MLflow's metric names; the evaluate stage logs
the samples with their timestamps, and the run's "System metrics" tab in the MLflow UI draws them.
The names are MLflow's but for the memory ones, shortened from `system/system_memory_usage_...`: in
MLflow 3.17's compare view a name that long wraps, and the column of names then no longer lines up with
the column of values (test_accuracy showed another metric's value; tests/integration/test_mlflow_ui.py).

On by default: a sample costs 0.4-0.8 ms of CPU, 0.04-0.08 % of each fit's time on the default run
(the run record keeps the sampler's own CPU seconds as `system_metrics_cpu_seconds`). Turn it off
with PIPELINE_SYSTEM_METRICS=0.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

ENV = "PIPELINE_SYSTEM_METRICS"


def enabled() -> bool:
    """Whether $PIPELINE_SYSTEM_METRICS asks for system metrics (unset: yes; 0/false/no/off: no)."""
    value = os.environ.get(ENV, "1").strip().lower()
    if value not in {"1", "true", "yes", "on", "0", "false", "no", "off"}:
        raise ValueError(f"{ENV}={value!r}: expected 1 (record system metrics during fits) or 0 (do not)")
    return value in {"1", "true", "yes", "on"}


class SystemMonitor:
    """Sample CPU utilisation and memory every `interval` seconds while the `with` block runs.

    `samples` holds one dict per sample: the time (`timestamp_ms`) and MLflow's system metric names
    (`system/cpu_utilization_percentage`, `system/memory_usage_megabytes`, `system/memory_usage_percentage`);
    `cpu_seconds` is what the sampling itself cost.
    """

    def __init__(self, interval: float = 1.0, enabled: bool = True) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval}")
        self.interval, self.enabled = interval, enabled
        self.samples: list[dict[str, Any]] = []
        self.cpu_seconds = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        import psutil

        started = time.thread_time()
        psutil.cpu_percent(interval=None)  # the first call only starts psutil's CPU-time difference
        stopped = False
        while not stopped:  # a last sample when the block ends: a fit shorter than `interval` has one too
            stopped = self._stop.wait(self.interval)
            memory = psutil.virtual_memory()
            self.samples.append({
                "timestamp_ms": int(time.time() * 1000),
                "system/cpu_utilization_percentage": psutil.cpu_percent(interval=None),
                "system/memory_usage_megabytes": round((memory.total - memory.available) / 2**20, 1),
                "system/memory_usage_percentage": memory.percent,
            })
        self.cpu_seconds = time.thread_time() - started

    def __enter__(self) -> SystemMonitor:
        if self.enabled:
            self._thread = threading.Thread(target=self._sample, name="system-metrics", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()

    def record(self) -> dict[str, Any]:
        """What the run record keeps: the samples and their cost (nothing when sampling was off)."""
        if not self.enabled:
            return {}
        return {"system_metrics": self.samples, "system_metrics_cpu_seconds": round(self.cpu_seconds, 4)}
