"""The Optuna study behind `python -m pipeline tune <variant>` (`pipeline/tune.py`): its storage, opening
and resuming it, and running its trials (each a `fit_variant` scored on the validation split,
`pipeline/trial.py`) in one or several processes against the shared storage.

- Storage: Optuna's RDB storage, `optuna.db` (SQLite) in the project, or the database URL in
  $PIPELINE_TUNE_STORAGE (PostgreSQL for several machines). One study per variant, search space and
  data: its name carries their hash, so a rerun continues it and a changed space starts another.
- Sampler and pruner: TPE seeded from `seed` (and the worker and the trials already run, so a rerun or a
  second worker draws new points), the median pruner on each epoch's validation accuracy.
- Selection sees the validation split only: the test split is not even loaded.
- Tracking: one MLflow parent run per study (search space, plots, best trial), a child run per trial.

About 320 lines: the storage, its failure messages and the resume of a killed study belong together
(a resumed study must open the storage, find the dead trials and reseed the sampler in one place).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.config import PipelineConfig, Variant
from pipeline.dataset import PreparedData, image_chunks, load_prepared
from pipeline.errors import ParamsError, StudyStorageError
from pipeline.layout import Layout
from pipeline.search_space import SearchSpace
from pipeline.trial import METRIC, InvalidTrialError, TrialRunner, process_is_gone

if TYPE_CHECKING:
    import optuna

STORAGE_VARIABLE = "PIPELINE_TUNE_STORAGE"
# An unreachable database server fails the command within seconds, not after TCP's minutes.
CONNECT_TIMEOUT_SECONDS = 5
PARENT_RUN_ATTR = "mlflow_parent_run_id"
RESULT_STATES = ("COMPLETE", "PRUNED")  # the trials a study counts towards --trials
MAX_FAILURES_IN_A_ROW = 10  # invalid drawn models cost a fraction of a second each


def storage_url(root: str | Path) -> str:
    """The study storage in force: $PIPELINE_TUNE_STORAGE, or the project's SQLite file."""
    return os.environ.get(STORAGE_VARIABLE) or f"sqlite:///{Layout(Path(root).resolve()).tune_storage}"


def masked(url: str) -> str:
    """The URL with its password replaced by ***, for messages and MLflow params."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<not a database URL>"


def quiet_optuna(verbose: bool = False) -> None:
    """Optuna's log lines only with --verbose (the command prints one line per trial), and none of its
    ExperimentalWarnings (heartbeats and its matplotlib plots are marked experimental, and work)."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def open_storage(url: str, heartbeat_seconds: int) -> optuna.storages.RDBStorage:
    """Connect to the study storage, creating Optuna's tables if needed.

    Raises:
        StudyStorageError: unreachable or not a database URL (within CONNECT_TIMEOUT_SECONDS), naming
            the URL with its password masked.
    """
    import optuna
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StudyStorageError(f"{STORAGE_VARIABLE} is not a database URL (e.g. postgresql://user@host/db)") from None
    backend = parsed.get_backend_name()
    # SQLite: wait for a writer of another process rather than fail at once ("database is locked").
    connect_args = {"connect_timeout": CONNECT_TIMEOUT_SECONDS} if backend == "postgresql" else (
        {"timeout": 60} if backend == "sqlite" else {})
    try:
        return optuna.storages.RDBStorage(
            url, engine_kwargs={"connect_args": connect_args, "pool_pre_ping": True},
            # A trial whose process stops beating for two intervals is failed by the next trial of any
            # worker (another machine's dead worker); this host's dead processes: fail_orphaned_trials.
            heartbeat_interval=heartbeat_seconds, grace_period=2 * heartbeat_seconds)
    except (SQLAlchemyError, ImportError, OSError) as error:
        reason = " ".join(str(getattr(error, "orig", None) or error).split())
        if parsed.password:
            reason = reason.replace(parsed.password, "***")
        raise StudyStorageError(
            f"the study storage {masked(url)} is unreachable ({reason[:300]}); check the server and "
            f"{STORAGE_VARIABLE}, or unset it to use the project's optuna.db") from None


def search_space(config: PipelineConfig, variant_name: str) -> tuple[Variant, SearchSpace]:
    """The variant as params.yaml resolves it, and its search space (ParamsError if it has none)."""
    variant = config.variant(variant_name)
    space = config.models[variant_name].tune
    if space is None:
        raise ParamsError(f"models.{variant_name}.tune: no search space; add one (README, \"Hyperparameter "
                          "search\"), e.g. learning_rate: {low: 0.0005, high: 0.01, log: true}")
    return variant, space


def load_tuning_data(root: str | Path) -> PreparedData:
    """Train and validation splits only: the test split's files are not opened while tuning."""
    return load_prepared(Layout(root), splits=("train", "val"))


def study_name(variant: Variant, space: SearchSpace, data: PreparedData) -> str:
    """`<variant>-<hash>` of the variant's settings, its search space and the train/val data."""
    digest = hashlib.sha256()
    for images, labels in (data.split("train"), data.split("val")):
        for chunk in (*image_chunks(images), labels):  # the bytes of the split, a chunk at a time
            digest.update(memoryview(np.ascontiguousarray(chunk)).cast("B"))
    key = {"settings": variant.params_hash(), "space": space.model_dump(mode="json"), "data": digest.hexdigest()}
    return f"{variant.name}-{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]}"


@dataclass(frozen=True)
class StudyRef:
    """What the workers of a study need to join it (no password: the URL comes from their environment)."""

    name: str
    variant: str
    parent_run_id: str | None
    results: int  # trials with a result (complete or pruned) when the study was opened
    orphans: tuple[int, ...] = ()  # trials of dead processes this opening marked failed


def fail_orphaned_trials(study: optuna.Study, storage: optuna.storages.RDBStorage) -> list[int]:
    """Mark FAIL the RUNNING trials of processes that are gone; return their numbers.

    A trial left RUNNING by a killed process would stay so until heartbeats time it out, and only a
    later trial start checks those. A process on this host is checked at once (the pid and its start
    time, recorded by the trial); other hosts' trials are failed by their missing heartbeats.
    """
    import optuna
    from optuna.trial import TrialState

    study_id = storage.get_study_id_from_name(study.study_name)
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial.user_attrs.get("process")
        if not owner or not process_is_gone(owner):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        try:
            storage.set_trial_user_attr(trial_id, "fail_reason", f"its process (pid {owner['pid']} on "
                                        f"{owner['host']}) ended during the trial (killed?)")
            if storage.set_trial_state_values(trial_id, TrialState.FAIL):
                failed.append(trial.number)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another process got there first
    optuna.storages.fail_stale_trials(study)
    return failed


def _remove_finished_work_dirs(study: optuna.Study, layout: Layout) -> None:
    """A killed trial leaves its work directory (Keras' backup); a trial never resumes, so remove it."""
    running = {trial.number for trial in study.get_trials(deepcopy=False) if trial.state.name == "RUNNING"}
    for path in sorted(layout.trial_work_dir(study.study_name, 0).parent.glob("trial-*")):
        if path.name.removeprefix("trial-").isdigit() and int(path.name.removeprefix("trial-")) not in running:
            shutil.rmtree(path, ignore_errors=True)


def _results(study: optuna.Study) -> int:
    return sum(trial.state.name in RESULT_STATES for trial in study.get_trials(deepcopy=False))


def open_study(config: PipelineConfig, variant_name: str, root: str | Path, track: bool = True,
               verbose: bool = False) -> StudyRef:
    """Create or continue the variant's study, fail the trials of dead processes, open its parent run.

    Args:
        config: the validated params.
        variant_name: a key of `config.models` with a `tune` block.
        root: the project directory.
        track: open (or reopen) the study's MLflow parent run.
        verbose: Optuna's own log lines.

    Returns:
        The study's reference for `run_trials` and `summarize_study`.
    """
    import optuna

    from pipeline import tracking

    quiet_optuna(verbose)
    variant, space = search_space(config, variant_name)
    url = storage_url(root)
    storage = open_storage(url, config.tune.heartbeat_seconds)  # first: a bad storage fails in seconds
    name = study_name(variant, space, load_tuning_data(root))
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)
    orphans = fail_orphaned_trials(study, storage)
    _remove_finished_work_dirs(study, Layout(root))
    parent = study.user_attrs.get(PARENT_RUN_ATTR)
    if track:
        experiment_id = tracking.setup(root, config.tune.experiment_name)
        params = {"variant": variant_name, "study": name, "storage": masked(url), "seed": str(config.seed),
                  **tracking.flatten(space.model_dump(mode="json", exclude_none=True), prefix="space.")}
        tags = {"variant": variant_name, "study": name, "metric": METRIC,
                **{f"tune.{key}": str(value) for key, value in config.tune.model_dump().items()}}
        parent = tracking.start_study_run(experiment_id, parent, run_name=f"tune-{name}", params=params, tags=tags)
        study.set_user_attr(PARENT_RUN_ATTR, parent)
        for number in orphans:
            trial = study.trials[number]
            tracking.log_trial_run(experiment_id, parent, trial_record(trial, {}), tags={"variant": variant_name,
                                                                                          "study": name})
    return StudyRef(name=name, variant=variant_name, parent_run_id=parent, results=_results(study),
                    orphans=tuple(orphans))


def trial_record(trial: optuna.trial.FrozenTrial, facts: dict[str, Any]) -> dict[str, Any]:
    """A finished trial as the results file and its MLflow child run show it."""
    record = {"number": trial.number, "state": trial.state.name, "value": trial.value, "params": trial.params,
              "seconds": round(trial.duration.total_seconds(), 1) if trial.duration else None,
              "history": facts.get("history", {}),
              "epochs_run": trial.user_attrs.get("epochs_run"), "fail_reason": trial.user_attrs.get("fail_reason")}
    if trial.state.name == "PRUNED":
        record["pruned_at_epoch"] = (trial.last_step or 0) + 1  # steps are 0-based epoch indices
    return record


def _describe(variant_name: str, record: dict[str, Any]) -> str:
    settings = " ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
                        for key, value in record["params"].items())
    seconds = f" in {record['seconds']:.1f} s" if record.get("seconds") is not None else ""
    state = record["state"]
    if state == "COMPLETE":
        outcome = f"{METRIC} {record['value']:.4f}{seconds}"
    elif state == "PRUNED":
        outcome = f"pruned after epoch {record['pruned_at_epoch']} ({METRIC} {record['value']:.4f}){seconds}"
    else:
        outcome = f"failed{seconds}: {record['fail_reason'] or 'see the traceback'}"
    return f"[tune {variant_name}] trial {record['number']} ({settings}): {outcome}"


def sampler_seed(seed: int, worker: int, trials_so_far: int) -> int:
    """The TPE sampler's seed: from `seed`, and distinct per worker and per rerun of a study (a rerun
    seeded alike would draw the first points of the killed run again)."""
    return int(np.random.SeedSequence([seed, worker, trials_so_far]).generate_state(1)[0])


def run_trials(config: PipelineConfig, variant_name: str, root: str | Path, ref: StudyRef, results_wanted: int,
               worker: int = 0, track: bool = True, verbose: bool = False) -> dict[str, int]:
    """Run trials of the study in this process until `results_wanted` of them end with a result.

    A drawn model that cannot be built fails its trial and the study goes on; after MAX_FAILURES_IN_A_ROW
    such failures in a row (or as many as results wanted, if more) this call stops: that space needs changing.

    Args:
        config: the validated params.
        variant_name: the study's variant.
        root: the project directory (data, trials' work directories, the default storage).
        ref: from `open_study`.
        results_wanted: complete or pruned trials this call adds.
        worker: this worker's index (its sampler seed); workers share the storage.
        track: log a child run per trial under the study's parent run.
        verbose: Optuna's own log lines.

    Returns:
        {"results": ..., "failed": ...} of this call.
    """
    import optuna

    from pipeline import tracking

    quiet_optuna(verbose)
    storage = open_storage(storage_url(root), config.tune.heartbeat_seconds)
    variant, space = search_space(config, variant_name)
    seed = sampler_seed(config.seed, worker, len(storage.get_all_trials(_study_id(storage, ref))))
    study = optuna.load_study(
        study_name=ref.name, storage=storage,
        # constant_liar: a worker treats the others' running trials as poor, so workers spread out.
        sampler=optuna.samplers.TPESampler(n_startup_trials=config.tune.startup_trials, seed=seed,
                                           constant_liar=True),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=config.tune.startup_trials,
                                           n_warmup_steps=config.tune.warmup_epochs))
    experiment_id = tracking.setup(root, config.tune.experiment_name) if track and ref.parent_run_id else None
    counts = {"results": 0, "failed": 0, "failed_in_a_row": 0}

    def trial_ended(trial: optuna.trial.FrozenTrial, facts: dict[str, Any]) -> None:
        record = trial_record(trial, facts)
        counts["results" if trial.state.name in RESULT_STATES else "failed"] += 1
        counts["failed_in_a_row"] = 0 if trial.state.name in RESULT_STATES else counts["failed_in_a_row"] + 1
        print(_describe(variant_name, record), flush=True)
        if experiment_id is not None:
            tracking.log_trial_run(experiment_id, ref.parent_run_id, record,
                                   tags={"variant": variant_name, "study": ref.name})

    def enough(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if counts["results"] >= results_wanted or counts["failed_in_a_row"] >= max(results_wanted,
                                                                                     MAX_FAILURES_IN_A_ROW):
            study.stop()

    if results_wanted > 0:
        runner = TrialRunner(variant, space, load_tuning_data(root), Layout(root), ref.name, trial_ended)
        study.optimize(runner, catch=(InvalidTrialError,), callbacks=[runner.after_trial, enough])
    del counts["failed_in_a_row"]
    return counts


def _study_id(storage: optuna.storages.RDBStorage, ref: StudyRef) -> int:
    try:
        return storage.get_study_id_from_name(ref.name)
    except KeyError:
        raise StudyStorageError(
            f"study {ref.name} is not in {masked(storage.url)}: this worker uses another storage than the one "
            f"the study was created in; give it the same {STORAGE_VARIABLE}") from None
