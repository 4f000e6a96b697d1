"""Tuning costs no more than training: N trials of `python -m pipeline tune` against N plain `fit_variant`
fits of the very settings those trials drew; and what two Dask workers buy on this machine.

    python -m benchmarks.tune [--variant three_conv] [--trials 4] [--rounds 2] [--parallel]

Overhead: a project copy on the bundled sample (its MLflow store created beforehand, as in a project
where `dvc repro` ran); each round runs the tune command on a fresh study (no pruning: `startup_trials`
= N, so every trial trains to its end), then one process fitting the same N settings with
`fit_variant` (the drawn settings are seeded: every round draws the same). The arms alternate (tune,
plain; then plain, tune). Compared: the command's own wall time (`run_tune`, from opening the study to
the results file and plots) against the fits' (loading the data included); both import TensorFlow
inside the timed part. Goal (issue 14): ratio <= 1.10.

Parallel (`--parallel`): the same N trials, on a search space whose trials cost alike, by the command
(one process) and by the `tune-variant` flow on a local Dask cluster of two worker processes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import BIN, REPO, bench_env, default_params, load_average, median, new_project, spread

# Trials of similar cost for the parallel comparison: the spread is in the learning rate only.
EVEN_SPACE = {"batch_size": [128], "epochs": {"low": 5, "high": 6},
              "learning_rate": {"low": 0.0005, "high": 0.01, "log": True}}


def prepare_project(destination: Path, variant: str, trials: int, space: dict[str, Any] | None = None) -> Path:
    """A project copy of the shipped params (the variant's search space replaced by `space` if given,
    no pruning within `trials`), ingested, prepared, with its MLflow store created."""
    params = default_params()
    params["tune"]["startup_trials"] = trials
    if space is not None:
        params["models"][variant]["tune"] = space
    project = new_project(destination, params)
    for stage in ("ingest", "prepare"):
        subprocess.run([str(BIN / "python"), "-m", "pipeline", stage], cwd=project, env=bench_env(), check=True,
                       capture_output=True)
    subprocess.run([str(BIN / "python"), "-c", "from pipeline.tracking import setup; "
                    f"setup('.', {params['tune']['experiment_name']!r})"], cwd=project, env=bench_env(), check=True,
                   capture_output=True)
    return project


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _fresh_study(project: Path) -> None:
    (project / "optuna.db").unlink(missing_ok=True)
    shutil.rmtree(project / "reports" / "tune", ignore_errors=True)


def tune_once(project: Path, variant: str, trials: int) -> dict[str, Any]:
    """`python -m pipeline tune` on a fresh study: the command's wall time and the trials' settings."""
    _fresh_study(project)
    started, cpu_before = time.perf_counter(), _children_cpu_seconds()
    subprocess.run([str(BIN / "python"), "-m", "pipeline", "tune", variant, "--trials", str(trials)], cwd=project,
                   env=bench_env(), check=True, capture_output=True, timeout=3600)
    process_seconds = time.perf_counter() - started
    report = json.loads((project / "reports" / "tune" / f"{variant}.json").read_text())
    return {"seconds": report["seconds"], "process_seconds": round(process_seconds, 1),
            "cpu_seconds": round(_children_cpu_seconds() - cpu_before, 1),
            "trial_params": [trial["params"] for trial in report["trial_list"]],
            "trial_seconds": [trial["seconds"] for trial in report["trial_list"]]}


def plain_fits(project: Path, variant: str, trial_params: list[dict[str, Any]]) -> dict[str, Any]:
    """In this process: the data, then one `fit_variant` per trial's settings (no Optuna, no MLflow)."""
    from pipeline.checkpoint import WorkDir
    from pipeline.config import load_params
    from pipeline.train import fit_variant
    from pipeline.tune import load_tuning_data, variant_for_trial_of

    config = load_params(project / "params.yaml")
    started = time.perf_counter()
    data = load_tuning_data(project)
    for params in trial_params:
        with tempfile.TemporaryDirectory() as scratch:
            fit_variant(variant_for_trial_of(config, variant, params, project), data, WorkDir(Path(scratch), "bench"),
                        verbose=0)
    return {"seconds": round(time.perf_counter() - started, 1)}


def plain_once(project: Path, variant: str, trial_params: list[dict[str, Any]]) -> dict[str, Any]:
    """`plain_fits` in a process of its own: its timed part, and the process's CPU seconds (start included)."""
    cpu_before = _children_cpu_seconds()
    worker = subprocess.run([sys.executable, "-m", "benchmarks.tune", "--worker", str(project), "--variant", variant,
                             "--params-json", json.dumps(trial_params)], cwd=REPO, env=bench_env(),
                            capture_output=True, text=True, check=True, timeout=3600)
    return {**json.loads(worker.stdout.strip().splitlines()[-1]),
            "cpu_seconds": round(_children_cpu_seconds() - cpu_before, 1)}


def measure_overhead(variant: str, trials: int, rounds: int) -> dict[str, Any]:
    """Tune vs plain fits of the same settings, `rounds` times, arms alternating."""
    with tempfile.TemporaryDirectory() as scratch:
        project = prepare_project(Path(scratch) / "project", variant, trials)
        load_before = load_average()
        settings: list[dict[str, Any]] | None = None
        pairs = []
        for round_index in range(rounds):
            if round_index % 2 == 0 or settings is None:
                tuned = tune_once(project, variant, trials)
                settings = tuned["trial_params"]
                plain = plain_once(project, variant, settings)
            else:
                plain = plain_once(project, variant, settings)
                tuned = tune_once(project, variant, trials)
            assert tuned["trial_params"] == settings, "a fresh seeded study drew other settings"
            pairs.append({"tune": tuned["seconds"], "plain": plain["seconds"], "tune_cpu": tuned["cpu_seconds"],
                          "plain_cpu": plain["cpu_seconds"],
                          "tune_process": tuned["process_seconds"], "trial_seconds": tuned["trial_seconds"]})
            print(json.dumps(pairs[-1]), flush=True)
    ratios = [pair["tune"] / pair["plain"] for pair in pairs]
    cpu_ratios = [pair["tune_cpu"] / pair["plain_cpu"] for pair in pairs]
    return {"variant": variant, "trials": trials, "rounds": pairs, "settings": settings,
            "ratio": round(median(ratios), 3), "ratio_range": spread(ratios),
            "cpu_ratio": round(median(cpu_ratios), 3), "cpu_ratio_range": spread(cpu_ratios),
            "load_1min": f"{load_before}-{load_average()}"}


def measure_parallel(variant: str, trials: int) -> dict[str, Any]:
    """The same number of trials of alike cost: the command (one process) vs the flow on 2 Dask workers."""
    with tempfile.TemporaryDirectory() as scratch:
        project = prepare_project(Path(scratch) / "project", variant, trials, space=EVEN_SPACE)
        load_before = load_average()
        one = tune_once(project, variant, trials)
        _fresh_study(project)
        env = {**bench_env(), "PREFECT_HOME": str(Path(scratch) / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED":
               "false"}
        started = time.perf_counter()
        subprocess.run([str(BIN / "python"), "-m", "flows.tune", variant, "--trials", str(trials), "--workers", "2"],
                       cwd=project, env=env, check=True, capture_output=True, timeout=3600)
        flow_process = time.perf_counter() - started
        report = json.loads((project / "reports" / "tune" / f"{variant}.json").read_text())
    two = {"seconds": report["seconds"], "process_seconds": round(flow_process, 1),
           "trial_seconds": [trial["seconds"] for trial in report["trial_list"]]}
    return {"variant": variant, "trials": trials, "one_process": one, "two_dask_workers": two,
            "load_1min": f"{load_before}-{load_average()}"}


def markdown(overhead: dict[str, Any] | None, parallel: dict[str, Any] | None) -> str:
    lines = []
    if overhead:
        verdict = "met" if overhead["ratio"] <= 1.10 else "**missed**"
        lines += [f"{overhead['trials']} trials of `{overhead['variant']}` (no pruning) against {overhead['trials']} "
                  "plain `fit_variant` fits of the same drawn settings, per round:", "",
                  "| round | tune command, wall (s) | plain fits, wall (s) | ratio | tune CPU (s) | plain CPU (s) | "
                  "CPU ratio | trials (s) |", "|---|---|---|---|---|---|---|---|"]
        for index, pair in enumerate(overhead["rounds"], start=1):
            lines.append(f"| {index} | {pair['tune']:.1f} | {pair['plain']:.1f} | {pair['tune'] / pair['plain']:.3f} | "
                         f"{pair['tune_cpu']:.1f} | {pair['plain_cpu']:.1f} | "
                         f"{pair['tune_cpu'] / pair['plain_cpu']:.3f} | "
                         f"{', '.join(f'{seconds:.1f}' for seconds in pair['trial_seconds'])} |")
        lines += ["", f"Median wall-time ratio **{overhead['ratio']:.3f}** ({verdict}, goal <= 1.10), range "
                  f"{overhead['ratio_range']}; CPU-time ratio {overhead['cpu_ratio']:.3f} (range "
                  f"{overhead['cpu_ratio_range']}, process start and imports included); load {overhead['load_1min']}.",
                  ""]
    if parallel:
        one, two = parallel["one_process"], parallel["two_dask_workers"]
        lines += [f"{parallel['trials']} trials of `{parallel['variant']}` (batch 128, 5-6 epochs, "
                  "learning rate drawn):",
                  "", "| | wall, study only (s) | process incl. start (s) | median trial (s) |", "|---|---|---|---|",
                  f"| `python -m pipeline tune` (1 process) | {one['seconds']:.1f} | {one['process_seconds']:.1f} | "
                  f"{median(one['trial_seconds']):.1f} |",
                  f"| `python -m flows.tune --workers 2` (2 Dask worker processes) | {two['seconds']:.1f} | "
                  f"{two['process_seconds']:.1f} | {median(two['trial_seconds']):.1f} |",
                  "", f"Load {parallel['load_1min']}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="three_conv")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--parallel", action="store_true", help="also the 2-Dask-worker comparison")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--params-json", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.worker:
        print(json.dumps(plain_fits(Path(arguments.worker), arguments.variant, json.loads(arguments.params_json))))
        sys.stdout.flush()
        os._exit(0)  # as `python -m pipeline` does: no TensorFlow teardown
    overhead = measure_overhead(arguments.variant, arguments.trials, arguments.rounds)
    parallel = measure_parallel(arguments.variant, arguments.trials) if arguments.parallel else None
    print(markdown(overhead, parallel))


if __name__ == "__main__":
    main()
