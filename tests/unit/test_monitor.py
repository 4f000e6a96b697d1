"""System metrics sampled during a fit (pipeline/monitor.py), with MLflow's metric names."""

from __future__ import annotations

import time

import pytest

from pipeline.monitor import ENV, SystemMonitor, enabled

NAMES = {"system/cpu_utilization_percentage", "system/memory_usage_megabytes", "system/memory_usage_percentage"}


def test_samples_while_the_block_runs_and_one_when_it_ends() -> None:
    with SystemMonitor(interval=0.05) as monitor:
        deadline = time.monotonic() + 0.4
        while time.monotonic() < deadline:
            sum(range(10_000))  # keep a core busy
    assert len(monitor.samples) >= 4
    assert all(set(sample) == {"timestamp_ms", *NAMES} for sample in monitor.samples)
    assert all(0 <= sample["system/cpu_utilization_percentage"] <= 100 for sample in monitor.samples)
    assert all(sample["system/memory_usage_megabytes"] > 0 for sample in monitor.samples)
    stamps = [sample["timestamp_ms"] for sample in monitor.samples]
    assert stamps == sorted(stamps)
    record = monitor.record()
    assert record["system_metrics"] == monitor.samples and 0 <= record["system_metrics_cpu_seconds"] < 0.4


def test_a_block_shorter_than_the_interval_still_has_a_sample() -> None:
    with SystemMonitor(interval=60) as monitor:
        pass
    assert len(monitor.samples) == 1


def test_off_records_nothing() -> None:
    with SystemMonitor(enabled=False) as monitor:
        time.sleep(0.05)
    assert monitor.samples == [] and monitor.record() == {}


@pytest.mark.parametrize(("value", "expected"), [(None, True), ("1", True), ("on", True), ("0", False),
                                                 ("false", False)])
def test_the_variable_turns_it_on_and_off(monkeypatch: pytest.MonkeyPatch, value: str | None,
                                          expected: bool) -> None:
    if value is None:
        monkeypatch.delenv(ENV, raising=False)
    else:
        monkeypatch.setenv(ENV, value)
    assert enabled() is expected


def test_another_value_is_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "sometimes")
    with pytest.raises(ValueError, match="PIPELINE_SYSTEM_METRICS='sometimes': expected 1"):
        enabled()
