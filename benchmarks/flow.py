"""Benchmark 4: the Prefect flow vs calling the same stage functions directly, on the same inputs.

Each arm runs in a new process on a new project copy (tiny data), so both do all the work: the flow
with `force=True` under `prefect_test_harness` (a real temporary Prefect API server), the direct arm
calling run_ingest, run_prepare, run_training, run_evaluation, write_leaderboard, register_best and
dvc_sync.commit in the flow's order. Libraries both arms need are imported before the clock starts;
importing Prefect and starting the API server are reported on their own.

    python -m benchmarks.flow <spec.json> <result.json>    # one arm
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    alternating,
    bench_env,
    load_average,
    median,
    new_project,
    params_with,
    run_python_worker,
    spread,
    worker_main,
)


def direct(project: Path) -> dict[str, Any]:
    """The flow's stage calls without Prefect (force=True: every stage runs)."""
    from flows import dvc_sync
    from pipeline.compare import write_leaderboard
    from pipeline.config import load_params
    from pipeline.evaluate import run_evaluation
    from pipeline.ingest import run_ingest
    from pipeline.prepare import run_prepare
    from pipeline.register import register_best
    from pipeline.train import run_training

    config = load_params(project / "params.yaml")
    os.environ.setdefault("PIPELINE_RUN_GROUP", "bench-direct")
    run_ingest(config, project)
    run_prepare(config, project)
    for variant in config.models:
        run_training(config, variant, project, extra_tags={"prefect_flow_run_id": "none"})
    for variant in config.models:
        run_evaluation(config, variant, project)
    rows = write_leaderboard(config, project).to_dict(orient="records")
    decision = register_best(config, project)
    dvc_sync.commit(project)
    return {"leaderboard": rows, "registry": decision}


STAGE_FUNCTIONS = ["run_ingest", "run_prepare", "run_training", "run_evaluation", "write_leaderboard",
                   "register_best"]
DIRECT_TARGETS = {"run_ingest": "pipeline.ingest:run_ingest", "run_prepare": "pipeline.prepare:run_prepare",
                  "run_training": "pipeline.train:run_training", "run_evaluation": "pipeline.evaluate:run_evaluation",
                  "write_leaderboard": "pipeline.compare:write_leaderboard",
                  "register_best": "pipeline.register:register_best", "dvc commit": "flows.dvc_sync:commit"}
# The flow module bound the stage functions by name at import: time them there.
# The flow sets up the MLflow store once before the fan-out (pipeline work, which the direct arm does
# inside its first run_training): it counts as stage work, not as Prefect's overhead.
FLOW_TARGETS = {**{name: f"flows.training:{name}" for name in STAGE_FUNCTIONS}, "dvc commit": "flows.dvc_sync:commit",
                "tracking setup (the flow's own call)": "flows.training:setup_tracking",
                "publish_artifacts (Prefect artifacts)": "flows.training:publish_artifacts"}


def run_arm(spec: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    import keras  # noqa: F401
    import mlflow  # noqa: F401
    import tensorflow  # noqa: F401

    import flows.dvc_sync  # noqa: F401
    import pipeline.evaluate
    import pipeline.register
    import pipeline.train  # noqa: F401
    from benchmarks.instruments import phase_timers

    project = Path(spec["project"])
    result: dict[str, Any] = {"arm": spec["arm"], "common_imports_seconds": time.perf_counter() - started}
    totals: dict[str, float] = {}
    result["stage_function_seconds"] = totals
    if spec["arm"] == "direct":
        begun, begun_cpu = time.perf_counter(), time.process_time()
        with phase_timers(DIRECT_TARGETS, totals):
            direct(project)
        result["call_seconds"] = time.perf_counter() - begun
        result["call_cpu_seconds"] = time.process_time() - begun_cpu
        return result
    begun = time.perf_counter()
    from prefect.testing.utilities import prefect_test_harness

    from flows.training import training_flow

    result["prefect_import_seconds"] = time.perf_counter() - begun
    begun = time.perf_counter()
    with prefect_test_harness(server_startup_timeout=300):
        result["harness_start_seconds"] = time.perf_counter() - begun
        begun, begun_cpu = time.perf_counter(), time.process_time()
        with phase_timers(FLOW_TARGETS, totals):
            state = training_flow(root=str(project), force=True, return_state=True)
        result["call_seconds"] = time.perf_counter() - begun
        result["call_cpu_seconds"] = time.process_time() - begun_cpu  # not the API server's (another process)
        if not state.is_completed():
            raise RuntimeError(f"the flow run did not complete: {state.message}")
        begun = time.perf_counter()
    result["harness_stop_seconds"] = time.perf_counter() - begun
    return result


def measure(work: Path, rounds: int, images: int | None, variants: list[str] | None, epochs: int | None,
            log: Any = print) -> dict[str, Any]:
    """None for images, variants or epochs keeps the default params' (the run a deployment schedules)."""
    overrides = {key: value for key, value in (("data.max_images", images), ("train.epochs", epochs))
                 if value is not None}
    params = params_with(overrides, variants)
    runs: list[dict[str, Any]] = []
    loads = []
    for round_index in range(rounds):
        for arm in alternating(["flow", "direct"], round_index):
            project = new_project(work / "flow" / f"round{round_index}-{arm}" / "project", params)
            load = load_average()["1min"]
            loads.append(load)
            env = bench_env(home=project.parent)
            result = run_python_worker("benchmarks.flow", {"arm": arm, "project": str(project)},
                                       work / "flow", f"round{round_index}-{arm}", env, cwd=project)
            runs.append({"round": round_index, "load_1min": load, **result})
            log(f"  round {round_index + 1}/{rounds} {arm:<7} {result['call_seconds']:6.1f}s (load {load:.2f})")
    ratios, cpu_ratios = [], []
    for round_index in range(rounds):
        by_arm = {row["arm"]: row for row in runs if row["round"] == round_index}
        ratios.append(by_arm["flow"]["call_seconds"] / by_arm["direct"]["call_seconds"])
        cpu_ratios.append(by_arm["flow"]["call_cpu_seconds"] / by_arm["direct"]["call_cpu_seconds"])
    flow_rows = [row for row in runs if row["arm"] == "flow"]
    overhead = median(ratios) - 1

    def attributed(row: dict[str, Any]) -> float:
        """Time outside the stage functions (and dvc commit) / time inside them, in the same run."""
        inside = sum(seconds for name, seconds in row["stage_function_seconds"].items()
                     if not name.startswith("publish"))
        return (row["call_seconds"] - inside) / inside

    for row in runs:
        row["attributed_overhead"] = attributed(row)
    flow_attributed = median(row["attributed_overhead"] for row in flow_rows)
    return {"runs": runs, "images": images, "variants": variants, "epochs": epochs, "rounds": rounds,
            "flow_seconds": median(row["call_seconds"] for row in flow_rows),
            "direct_seconds": median(row["call_seconds"] for row in runs if row["arm"] == "direct"),
            "overhead": overhead, "overhead_range": [value - 1 for value in spread(ratios)],
            "attributed_overhead": flow_attributed, "cpu_overhead": median(cpu_ratios) - 1,
            "direct_attributed_overhead": median(row["attributed_overhead"] for row in runs if row["arm"] == "direct"),
            "stage_function_seconds": {arm: {name: median(row["stage_function_seconds"].get(name, 0.0)
                                                          for row in runs if row["arm"] == arm)
                                             for name in FLOW_TARGETS} for arm in ("flow", "direct")},
            "prefect_import_seconds": median(row["prefect_import_seconds"] for row in flow_rows),
            "harness_start_seconds": median(row["harness_start_seconds"] for row in flow_rows),
            "goal": 0.10, "meets_goal": flow_attributed <= 0.10 and overhead <= 0.10, "load_1min_during": spread(loads)}


if __name__ == "__main__":
    worker_main(run_arm)
