"""The Prefect flow `tune-variant`: one variant's study, its trials spread over Dask workers that share
the study's storage.

    python -m flows.tune three_conv --trials 20                     # 2 local worker processes
    python -m flows.tune three_conv --trials 40 --dask tcp://host:8786   # an existing Dask cluster

The flow opens the study (and its MLflow parent run), gives each worker task its share of the trials
still missing, and summarises the study at the end: the same `pipeline.study` / `pipeline.tune`
functions as `python -m pipeline tune`. Each task runs in a Dask worker process of its own, so each
has its own Keras seed state and its own TPE sampler seed; Optuna's storage hands out trial numbers,
so none is lost or run twice. Workers read the storage URL from their own $PIPELINE_TUNE_STORAGE (as
they read MLFLOW_TRACKING_URI): a password never travels through Prefect's task parameters.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from pipeline.config import PipelineConfig, load_params
from pipeline.study import StudyRef, open_study, run_trials
from pipeline.tune import apply_best, summarize_study


@task(name="tune-trials", task_run_name="trials-worker-{worker}", cache_policy=NO_CACHE)
def trials_task(config: PipelineConfig, variant: str, root: Path, ref: StudyRef, results_wanted: int,
                worker: int) -> dict[str, int]:
    # No retries: a retried task would add trials beyond its share; the study keeps what finished.
    return run_trials(config, variant, root, ref, results_wanted, worker=worker)


def shares(total: int, workers: int) -> list[int]:
    """`total` trials split over `workers` as evenly as possible: 7 over 3 -> [3, 2, 2]."""
    return [total // workers + (1 if index < total % workers else 0) for index in range(workers)]


def task_runner(dask_address: str | None, workers: int) -> Any:
    """An existing Dask cluster, or a local one of `workers` single-threaded processes."""
    from prefect_dask import DaskTaskRunner

    if dask_address:
        return DaskTaskRunner(address=dask_address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                                          "dashboard_address": None})


@flow(name="tune-variant", log_prints=True)
def tune_flow(variant: str, trials: int | None = None, workers: int = 2, params_file: str = "params.yaml",
              root: str = ".", dask_address: str | None = None, apply: bool = False) -> dict[str, Any]:
    """Continue (or start) the variant's study until it has `trials` trials with a result.

    Args:
        variant: a key of `models` with a `tune` block.
        trials: the study's target of complete or pruned trials; default `tune.trials`.
        workers: tasks (and local Dask worker processes) to spread the missing trials over.
        params_file: the params file, relative to `root`.
        root: the project directory.
        dask_address: a Dask scheduler; default $PIPELINE_DASK_ADDRESS, and without it a local cluster.
        apply: write the best trial's settings into the params file.

    Returns:
        The study's report (reports/tune/<variant>.json) and what each worker added.
    """
    started = time.perf_counter()
    project = Path(root).resolve()
    config = load_params(project / params_file)
    ref = open_study(config, variant, project)
    target = config.tune.trials if trials is None else trials
    missing = max(0, target - ref.results)
    added = []
    if missing:
        with task_runner(dask_address or os.environ.get("PIPELINE_DASK_ADDRESS"), workers) as runner:
            futures = [runner.submit(trials_task, {"config": config, "variant": variant, "root": project, "ref": ref,
                                                   "results_wanted": share, "worker": worker})
                       for worker, share in enumerate(shares(missing, workers)) if share]
            added = [future.result() for future in futures]
    report = summarize_study(config, variant, project, ref, project / params_file,
                             seconds=time.perf_counter() - started)
    applied = apply_best(config, variant, project, report, project / params_file) if apply else False
    return {**report, "added": added, "applied": applied}


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the tune-variant flow once.")
    parser.add_argument("variant")
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--root", default=".")
    parser.add_argument("--dask", default=os.environ.get("PIPELINE_DASK_ADDRESS"),
                        help="Dask scheduler address (default: $PIPELINE_DASK_ADDRESS; none = a local cluster)")
    parser.add_argument("--apply", action="store_true")
    arguments = parser.parse_args()
    report = tune_flow(arguments.variant, trials=arguments.trials, workers=arguments.workers,
                       params_file=arguments.params, root=arguments.root, dask_address=arguments.dask,
                       apply=arguments.apply)
    best = report["best"]
    print(f"study {report['study']}: {report['trials']}; best: {best and best['val_accuracy']}, "
          f"{best and best['dvc_exp_run']}")


if __name__ == "__main__":
    main()
