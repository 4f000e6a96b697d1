"""Benchmark 5: `run_training(..., track=True)` vs `track=False` on the same variant, data and params.

One process alternates the arms (after a warm-up run that also creates the MLflow store), so the
fixed costs of a process (importing TensorFlow, its first fit) are out of the comparison; importing
MLflow, which a tracked stage process pays and an untracked one need not, is reported on its own.
Phase timers split what tracking costs.

    python -m benchmarks.tracking <spec.json> <result.json>    # the worker
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from benchmarks.common import alternating, bench_env, median, run_python_worker, spread, worker_main

TRACKING_PHASES = {
    "tracking setup (store, experiment)": "pipeline.tracking:setup",
    "_track (all logging after the fit)": "pipeline.train:_track",
    "log_training (params, metrics, 4 artifacts)": "pipeline.tracking:log_training",
    "log_keras_model": "pipeline.tracking:log_keras_model",
    "signature inference": "mlflow.models:infer_signature",
    "mlflow.tensorflow.log_model": "mlflow.tensorflow:log_model",
    "save model in MLflow format": "mlflow.tensorflow:save_model",
    "copy model artifacts to the store": "mlflow.tracking.client:MlflowClient.log_model_artifacts",
    "start/end run": "mlflow:start_run",
    "save model files (both arms)": "pipeline.train:save_trained",
    "fit (both arms)": "keras:Model.fit",
}


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    import keras  # noqa: F401
    import pandas  # noqa: F401
    import tensorflow  # noqa: F401

    import pipeline.lineage  # noqa: F401
    from benchmarks.instruments import phase_timers
    from pipeline import train
    from pipeline.config import load_params

    base_imports = time.perf_counter() - started
    begun = time.perf_counter()
    import mlflow
    import mlflow.tensorflow  # noqa: F401

    mlflow_imports = time.perf_counter() - begun
    root = Path(spec["project"])
    config = load_params(root / "params.yaml")
    warm = load_params(root / "params.yaml", overrides={"train.epochs": 1})
    begun = time.perf_counter()
    train.run_training(warm, spec["variant"], root, track=True)  # first fit of the process; creates the store
    warm_up = time.perf_counter() - begun
    runs = []
    for index, arm in enumerate(spec["sequence"]):
        totals: dict[str, float] = {}
        begun, begun_cpu = time.perf_counter(), time.process_time()
        with phase_timers(TRACKING_PHASES, totals):
            info = train.run_training(config, spec["variant"], root, track=arm != "off")
        runs.append({"index": index, "arm": arm, "seconds": time.perf_counter() - begun,
                     "cpu_seconds": time.process_time() - begun_cpu, "load_1min": os.getloadavg()[0],
                     "train_seconds": info["train_seconds"], "phases": totals})
    return {"base_imports_seconds": base_imports, "mlflow_imports_seconds": mlflow_imports,
            "warm_up_seconds": warm_up, "runs": runs}


def measure(project: Path, work: Path, variant: str, rounds: int, log: Any = print) -> dict[str, Any]:
    from benchmarks.common import load_average

    arms = ["off", "on"]
    sequence = [arm for round_index in range(rounds) for arm in alternating(arms, round_index)]
    load = load_average()["1min"]
    log(f"  {variant}: {len(sequence)} runs of the train stage function in one process (load {load:.2f}) ...")
    result = run_python_worker("benchmarks.tracking", {"project": str(project), "variant": variant,
                                                       "sequence": sequence},
                               work / "tracking", f"tracking-{variant}", bench_env(home=work), cwd=project)
    runs = result["runs"]
    for row in runs:
        row["round"] = row["index"] // len(arms)

    def ratios(arm: str, key: str = "seconds") -> list[float]:
        values = []
        for round_index in range(rounds):
            by_arm = {row["arm"]: row[key] for row in runs if row["round"] == round_index}
            values.append(by_arm[arm] / by_arm["off"])
        return values

    on = ratios("on")
    off_seconds = median(row["seconds"] for row in runs if row["arm"] == "off")
    phases: dict[str, float] = {}
    for name in TRACKING_PHASES:
        phases[name] = median(row["phases"].get(name, 0.0) for row in runs if row["arm"] == "on")
    overhead = median(on) - 1
    tracking_only = ("tracking setup (store, experiment)", "_track (all logging after the fit)")

    def attributed(arm: str) -> float:
        """Tracking's own phases / the rest of the same run: immune to load swings between runs."""
        values = []
        for row in runs:
            if row["arm"] == arm:
                spent = sum(row["phases"].get(name, 0.0) for name in tracking_only)
                values.append(spent / (row["seconds"] - spent))
        return median(values)
    return {"variant": variant, "rounds": rounds, "runs": runs, "off_seconds": off_seconds,
            "on_seconds": median(row["seconds"] for row in runs if row["arm"] == "on"),
            "overhead": overhead, "overhead_range": [value - 1 for value in spread(on)],
            "cpu_overhead": median(ratios("on", "cpu_seconds")) - 1,
            "attributed_overhead": attributed("on"),
            "mlflow_import_seconds": result["mlflow_imports_seconds"],
            "overhead_with_mlflow_import": (median(on) - 1) + result["mlflow_imports_seconds"] / off_seconds,
            "phases_on": phases, "warm_up_seconds": result["warm_up_seconds"],
            "goal": 0.03, "meets_goal": attributed("on") <= 0.03, "load_1min_at_start": load,
            "load_1min_at_end": load_average()["1min"]}


if __name__ == "__main__":
    worker_main(run_worker)
