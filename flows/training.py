"""The Prefect flow: the same stages as `dvc repro`, as tasks over the same `pipeline` functions.

    python -m flows.training                      # one run, locally
    python -m flows.training --dask tcp://host:8786  # variants on a Dask cluster

One source of truth with DVC: before each stage the flow asks DVC whether the stage is up to date
(its deps, params and outs hashes, exactly what `dvc repro` checks) and skips it if so; after the
run it records what it produced with `dvc commit`, so `dvc status` is clean and a following
`dvc repro` does nothing. The flow never runs the DVC stage commands itself, so its tasks can go to
Dask workers as plain Python calls.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff

from flows import dvc_sync, report
from pipeline import console, history
from pipeline.compare import run_compare
from pipeline.config import PipelineConfig, load_params
from pipeline.errors import PipelineError, SourceUnavailableError, TrackingError
from pipeline.evaluate import evaluate_variant
from pipeline.ingest import run_ingest
from pipeline.prepare import run_prepare
from pipeline.register import run_register
from pipeline.tracking import setup as setup_tracking
from pipeline.train import run_train
from pipeline.versioning import bring_in


# Retries only where I/O can fail for a moment: a download (ingest from keras.datasets) and the
# tracking server / registry (evaluate logs to MLflow; registering is idempotent per run id).
# Training is never retried silently: a failed fit fails the flow run.
def _transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry what may pass (a server, a download, anything unexpected); not bad data or bad params."""
    try:
        state.result()
    except (TrackingError, SourceUnavailableError):
        return True
    except PipelineError:
        return False
    except Exception:
        return True
    return False


IO_RETRIES = {"retries": 2, "retry_delay_seconds": exponential_backoff(backoff_factor=5),
              "retry_condition_fn": _transient}
# DVC decides what reruns (stale_stages below), never Prefect's result cache: with result persistence
# turned on (PREFECT_RESULTS_PERSIST_BY_DEFAULT), a "cached" train task would skip training and leave
# stale files. NO_CACHE also spares hashing each task's inputs and source on every run.
STAGE = {"cache_policy": NO_CACHE}


@task(name="ingest", **STAGE, **IO_RETRIES)
def ingest_task(config: PipelineConfig, root: Path) -> dict[str, Any]:
    return run_ingest(config, root)


@task(name="refresh-data", **STAGE, **IO_RETRIES)
def refresh_task(config: PipelineConfig, root: Path) -> dict[str, Any]:
    return bring_in(config.data, root)


@task(name="prepare", **STAGE)
def prepare_task(config: PipelineConfig, root: Path) -> dict[str, Any]:
    return run_prepare(config, root)


@task(name="train", task_run_name="train-{variant}", **STAGE)
def train_task(config: PipelineConfig, variant: str, root: Path, flow_run_id: str) -> dict[str, Any]:
    # The run group travels as a tag: on Dask the task runs in another process than the flow.
    return run_train(config, variant, root, extra_tags={"prefect_flow_run_id": flow_run_id,
                                                           "run_group": f"prefect-{flow_run_id}"})


@task(name="evaluate", task_run_name="evaluate-{variant}", **STAGE, **IO_RETRIES)
def evaluate_task(config: PipelineConfig, variant: str, root: Path) -> dict[str, float]:
    return evaluate_variant(config, variant, root)


@task(name="compare", **STAGE)
def compare_task(config: PipelineConfig, root: Path) -> list[dict[str, Any]]:
    return run_compare(config, root).to_dict(orient="records")


@task(name="register", **STAGE, **IO_RETRIES)
def register_task(config: PipelineConfig, root: Path) -> dict[str, Any]:
    return run_register(config, root)


def task_runner(dask_address: str | None, local_workers: int) -> Any:
    """Local threads by default; a Dask cluster when an address is given (prefect-dask)."""
    if dask_address:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=dask_address)
    # One local worker by default: TensorFlow already uses every core for one fit, and Keras'
    # random seeds are process-global, so parallel fits in one process would not be reproducible.
    return ThreadPoolTaskRunner(max_workers=local_workers)


@flow(name="train-cnn-variants", log_prints=True)
def training_flow(params_file: str = "params.yaml", root: str = ".", variants: list[str] | None = None,
                  overrides: dict[str, Any] | None = None, force: bool = False,
                  dask_address: str | None = None, local_workers: int = 1, refresh: bool = True,
                  commit_to_git: bool = False, label: str = "") -> dict[str, Any]:
    """Refresh the user's data, then ingest -> prepare -> train each variant -> evaluate each -> compare
    -> register, each only when DVC says it is stale; report what was decided.

    Nothing stale: the run completes in seconds, creates no MLflow run and publishes "no new data
    since <date>; champion v<N> stays". A failure (a corrupt image in a new batch) publishes its
    reason and leaves the previous data version, models and champion as they were.

    Args:
        params_file: the params file, validated like `dvc repro` does.
        root: the project directory (a DVC repository).
        variants: train only these (default: every variant in the params file).
        overrides: dotted params to change for this run, e.g. {"models.three_conv.train.epochs": 1}
            (a variant's own setting wins over `train.*`). Outputs made with overrides are not
            committed to DVC (dvc.lock would claim the file's values).
        force: rerun stages even when DVC says they are up to date.
        dask_address: a Dask scheduler (`tcp://host:8786`) to train and evaluate the variants on;
            default: $PIPELINE_DASK_ADDRESS, and without it local threads.
        local_workers: concurrent local tasks when no Dask scheduler is used.
        refresh: take in new images of data.path first (`dvc update` of an import, `dvc add` of data in
            data/source/).
        commit_to_git: after a retrain, commit dvc.lock, the data's .dvc file and the tracked reports, so
            that `git checkout <commit> && dvc checkout` restores each data version and its models.
        label: a name for this run in the champion history (the demo's "day 3"); default none.

    Returns:
        The leaderboard rows and the registry decision.
    """
    logger = get_run_logger()
    project = Path(root).resolve()
    config = load_params(project / params_file, overrides=overrides)
    chosen = variants or list(config.models)
    for variant in chosen:
        config.variant(variant)  # unknown names fail here, before any work
    if set(chosen) != set(config.models):
        config = config.model_copy(update={"models": {name: config.models[name] for name in chosen}})
    use_dvc = not overrides and params_file == "params.yaml" and not variants
    before = history.data_snapshot(project)
    try:
        if use_dvc and refresh:
            refreshed = refresh_task(config, project)
            if refreshed["changed"]:
                logger.info("%s: %s took in a new version of %s", refreshed["copy"], refreshed["action"],
                            refreshed["origin"])
        outdated = dvc_sync.stale_stages(project, chosen) if use_dvc and not force else None
        if outdated is not None and not outdated:
            return report.nothing_new(project, before, label)
        result = _run_stages(config, project, chosen, outdated, dask_address, local_workers)
    except Exception as error:
        report.failed(project, before, error, label)
        raise
    if use_dvc:
        dvc_sync.commit(project)
        if commit_to_git:
            dvc_sync.git_commit(project, f"retrain: data {history.data_snapshot(project)['data_version']}")
    else:
        logger.warning("Ran with overrides or a subset of variants: outputs are not committed to DVC.")
    report.trained(project, config, result["leaderboard"], result["registry"], before, label)
    return result


def _run_stages(config: PipelineConfig, project: Path, chosen: list[str], outdated: set[str] | None,
                dask_address: str | None, local_workers: int) -> dict[str, Any]:
    """The stale stages (all of them when `outdated` is None), as tasks; returns leaderboard and decision."""

    def stale(stage: str) -> bool:
        return outdated is None or stage in outdated

    if stale("ingest"):
        ingest_task(config, project)
    if stale("prepare"):
        prepare_task(config, project)
    if any(stale(f"train@{variant}") or stale(f"evaluate@{variant}") for variant in chosen):
        # Create the tracking store and experiment once, here: tasks in several processes (Dask
        # workers) racing to create a fresh SQLite store, or the same experiment, fail.
        setup_tracking(project, config.mlflow.experiment_name)
    # The per-variant fan-out goes through the task runner: threads here, or Dask workers.
    with task_runner(dask_address or os.environ.get("PIPELINE_DASK_ADDRESS"), local_workers) as runner:
        trained = [runner.submit(train_task, {"config": config, "variant": variant, "root": project,
                                              "flow_run_id": str(flow_run.id)})
                   for variant in chosen if stale(f"train@{variant}")]
        for future in trained:
            future.result()  # a failed fit fails the flow here, with its traceback in the task run
        evaluated = [runner.submit(evaluate_task, {"config": config, "variant": variant, "root": project})
                     for variant in chosen if stale(f"evaluate@{variant}")]
        for future in evaluated:
            future.result()
    rows = compare_task(config, project)
    decision = register_task(config, project) if stale("register") else dvc_sync.last_decision(project)
    return {"leaderboard": rows, "registry": decision}


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the training flow once.")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--root", default=".")
    parser.add_argument("--dask", default=os.environ.get("PIPELINE_DASK_ADDRESS"),
                        help="Dask scheduler address (default: $PIPELINE_DASK_ADDRESS; none = local)")
    parser.add_argument("--workers", type=int, default=1, help="local concurrent tasks (no --dask)")
    parser.add_argument("--force", action="store_true")
    arguments = parser.parse_args()
    console.quiet_tensorflow()
    training_flow(params_file=arguments.params, root=arguments.root, force=arguments.force,
                  dask_address=arguments.dask, local_workers=arguments.workers)


if __name__ == "__main__":
    main()
