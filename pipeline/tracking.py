"""Every MLflow call of the project lives here. Nothing is configured at import time.

Tracking store: `MLFLOW_TRACKING_URI` when set (a server), else `sqlite:///<project>/mlflow.db`
with artifacts under `<project>/mlruns`, so `mlflow ui` started in the project root shows it all.

About 580 lines because it is the one module allowed to call MLflow (STYLE.md): runs, models,
registry, artifacts and tuning studies; most functions are a few lines around one MLflow call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pipeline.errors import ModelFileError, RegistryError, TrackingError
from pipeline.layout import Layout

if TYPE_CHECKING:
    from pipeline.config import Variant
    from pipeline.model_files import TrainedModel

T = TypeVar("T")
HEALTH_TIMEOUT_SECONDS = 5.0
# Keep a dead server from stalling a run in MLflow's own retry loop (default: 7 retries, 120 s).
CLIENT_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


def tracking_uri(root: str | Path = ".") -> str:
    """The tracking URI in force: the environment's, or the project's SQLite file."""
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(root)


def check_server(uri: str) -> None:
    """Fail fast (seconds, not minutes of retries) when an http(s) tracking server is down."""
    if not uri.startswith(("http://", "https://")):
        return
    request = urllib.request.Request(uri.rstrip("/") + "/health")
    try:
        with urllib.request.urlopen(request, timeout=HEALTH_TIMEOUT_SECONDS) as response:
            if response.status != 200:
                raise TrackingError(f"MLflow tracking server {uri} answered /health with {response.status}")
    except (urllib.error.URLError, OSError) as error:
        raise TrackingError(
            f"MLflow tracking server {uri} is unreachable ({error}). Start it (make stack-up, or "
            "docker compose up), or unset MLFLOW_TRACKING_URI to track into the local mlflow.db."
        ) from None


@contextlib.contextmanager
def outage_reported(root: str | Path, doing: str) -> Iterator[None]:
    """Report a tracking server that went away mid-stage as one TrackingError naming its URI.

    MLflow's own error is a retry traceback; the user needs which server, and what was kept. Errors
    while the server is up are not MLflow outages and pass through unchanged.
    """
    try:
        yield
    except TrackingError:
        raise
    except Exception as error:
        try:
            check_server(tracking_uri(root))
        except TrackingError as down:
            raise TrackingError(f"lost the tracking server while {doing}: {down}") from error
        raise


def _reason(error: BaseException) -> str:
    """The store's own reason, one line: the database driver's message when there is one (SQLAlchemy's
    and MLflow's wrappers add the whole SQL statement and its parameters)."""
    seen: BaseException | None = error
    while seen is not None:
        original = getattr(seen, "orig", None)
        if original is not None:
            return " ".join(str(original).split())
        seen = seen.__cause__ or seen.__context__
    lines = str(getattr(error, "message", error)).strip().splitlines()
    return lines[0][:300] if lines else type(error).__name__


def store_call(doing: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorate a call that writes to the tracking store: a store that refuses it (read-only, locked,
    a full disk, a server error) raises one TrackingError naming the store, instead of MLflow's and
    SQLAlchemy's tracebacks. What the caller records about the change must come after the call."""
    def decorate(function: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> T:
            from mlflow.exceptions import MlflowException
            from sqlalchemy.exc import SQLAlchemyError

            # MLflow's SQL store logs the whole SQLAlchemy traceback before it raises; the error below says it.
            store_log = logging.getLogger("mlflow.store.db.utils")
            level = store_log.level
            store_log.setLevel(logging.CRITICAL)
            try:
                return function(*args, **kwargs)
            except (MlflowException, SQLAlchemyError) as error:
                import mlflow

                uri = mlflow.get_tracking_uri()
                check_server(uri)  # a server that went away is said as such
                raise TrackingError(
                    f"the MLflow store {uri} refused {doing} ({_reason(error)}); nothing was recorded. Make "
                    "the store writable for this user (a SQLite file and its folder), or set "
                    "MLFLOW_TRACKING_URI to a store you may write to, and rerun the stage") from error
            finally:
                store_log.setLevel(level)
        return wrapper
    return decorate


def _use(uri: str) -> None:
    """Point this process's MLflow client at `uri` without exporting it.

    `mlflow.set_tracking_uri` also sets MLFLOW_TRACKING_URI in os.environ; left there, it would
    steer every later `setup()` in the same process (a Prefect worker, the tests) to this store,
    since the variable is how a user selects a server. Restore the user's value instead.
    """
    import mlflow

    chosen = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if chosen is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = chosen


def setup(root: str | Path, experiment_name: str) -> str:
    """Point MLflow at the tracking store and experiment; return the experiment id."""
    import mlflow

    for key, value in CLIENT_DEFAULTS.items():
        os.environ.setdefault(key, value)
    uri = tracking_uri(root)
    check_server(uri)
    _use(uri)
    experiment = mlflow.get_experiment_by_name(experiment_name)
    if experiment is None:
        location = None if uri.startswith("http") else Layout(Path(root).resolve()).mlruns_dir.as_uri()
        return store_call("creating the experiment")(mlflow.create_experiment)(
            experiment_name, artifact_location=location)
    if uri == default_tracking_uri(root):
        check_artifacts_inside(root, experiment_name, experiment.artifact_location)
    return experiment.experiment_id


def default_tracking_uri(root: str | Path) -> str:
    """The project's own store: `mlflow.db` in the project, artifacts in its `mlruns/`."""
    return f"sqlite:///{Layout(Path(root).resolve()).mlflow_db}"


def check_artifacts_inside(root: str | Path, experiment_name: str, artifact_location: str) -> None:
    """The project's own store must keep its artifacts in this project.

    `mlflow.db` records absolute artifact locations: in a copied or moved project it still names the
    original's `mlruns/`, and every run logged from the copy would write its artifacts there.
    """
    from urllib.parse import unquote, urlparse

    layout = Layout(Path(root).resolve())
    parsed = urlparse(artifact_location)
    if parsed.scheme not in ("", "file"):
        return  # an object store or server: not tied to the project's folder
    location = Path(unquote(parsed.path)).resolve()
    if location == layout.mlruns_dir or layout.root in location.parents:
        return
    raise TrackingError(
        f"the MLflow store {layout.mlflow_db} keeps the artifacts of experiment {experiment_name!r} in "
        f"{location}, outside this project {layout.root}: it was copied or moved from another project, and "
        f"runs logged here would write into that one. Start a store of this project's own (move "
        f"{layout.mlflow_db.name} and {layout.mlruns_dir.name}/ aside, then rerun), or track into the "
        f"original on purpose: MLFLOW_TRACKING_URI=sqlite:///{location.parent / 'mlflow.db'}")


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{'train': {'epochs': 5}} -> {'train.epochs': '5'} (MLflow params are flat strings)."""
    flat: dict[str, str] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, prefix=f"{name}."))
        elif isinstance(value, list) and value and all(isinstance(item, Mapping) for item in value):
            for index, item in enumerate(value):
                flat.update(flatten(item, prefix=f"{name}.{index}."))
        else:
            flat[name] = str(value)[:6000]
    return flat


def _create_run(client: Any, experiment_id: str, run_name: str, tags: dict[str, str],
                start_ms: int | None = None) -> Any:
    """`MlflowClient.create_run` with the tags `mlflow.start_run` would add (user: the tracking server's
    login or the OS user; source; git commit), which the plain client call leaves out ("unknown" user)."""
    from mlflow.tracking.context.registry import resolve_tags

    return client.create_run(experiment_id, start_time=start_ms, tags=resolve_tags(tags), run_name=run_name)


@contextlib.contextmanager
def training_run(experiment_id: str, run_name: str, tags: dict[str, str], start_ms: int | None = None,
                 end_ms: int | None = None) -> Iterator[str]:
    """A new run, active inside the block; it ends FINISHED, or FAILED on an exception. Given
    `start_ms`/`end_ms` (epoch milliseconds), the run's times are those: the fit's, logged after it."""
    import mlflow

    client = mlflow.MlflowClient()
    created = _create_run(client, experiment_id, run_name, tags, start_ms=start_ms)
    with mlflow.start_run(run_id=created.info.run_id) as run:
        yield run.info.run_id
    if end_ms is not None:
        client.set_terminated(run.info.run_id, status="FINISHED", end_time=end_ms)


@dataclasses.dataclass(frozen=True)
class DatasetRecord:
    """What a run trained on, for MLflow's Datasets column: the DVC md5 is the digest."""

    name: str
    digest: str
    source: str
    context: str
    tags: dict[str, str]


def _log_datasets(datasets: list[DatasetRecord]) -> None:
    import warnings

    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    for record in datasets:
        with warnings.catch_warnings():  # MLflow registers its local source class twice and says so
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(record.source)
        dataset = MetaDataset(source, name=record.name, digest=record.digest[:12])
        mlflow.log_input(dataset, context=record.context, tags=record.tags)


def log_training_run(experiment_id: str, variant: Variant, trained: TrainedModel,
                     files: list[Path], class_names: list[str], tags: dict[str, str],
                     ghost_run_file: Path, datasets: list[DatasetRecord] | None = None,
                     model_file: Path | None = None) -> dict[str, str]:
    """Log a finished training as one MLflow run: the resolved params, per-epoch metrics, the fit's
    seconds, config and summary artifacts, and the model (served with `class_names`). A run left RUNNING
    by a killed attempt (its id in `ghost_run_file`) is marked FAILED first.

    Returns:
        {"run_id": ..., "model_uri": ...}
    """
    import mlflow
    from mlflow.entities import Metric, Param

    if ghost_run_file.is_file():
        ghost = ghost_run_file.read_text().strip()
        if run_status(ghost) == "RUNNING":
            mark_failed(ghost)
    # What decides the training (the data is named by the data_version tag); not the whole params.yaml,
    # which holds settings of other stages that the train stage neither reads nor depends on.
    resolved = variant.settings()
    params = flatten(resolved)
    params["model.params"] = str(trained.training["params"])
    tags = {"variant": variant.name,
            # Groups the runs of one pipeline execution: `make repro` and the Prefect flow set it.
            "run_group": os.environ.get("PIPELINE_RUN_GROUP", f"{tags['git_commit'][:12]}-{tags['data_version'][:8]}"),
            **tags}
    with training_run(experiment_id, variant.name, tags, start_ms=trained.run.get("fit_started_ms"),
                      end_ms=trained.run.get("fit_ended_ms")) as run_id:
        ghost_run_file.parent.mkdir(parents=True, exist_ok=True)
        ghost_run_file.write_text(run_id)
        _log_datasets(datasets or [])
        client = mlflow.MlflowClient()
        timestamp = int(time.time() * 1000)
        metrics = [Metric(f"epoch_{name}", float(value), timestamp, step)
                   for name, values in trained.history.items() for step, value in enumerate(values, start=1)]
        metrics += [Metric(name, float(trained.run[name]), timestamp, 0)
                    for name in ("train_seconds", "images_per_second") if trained.run.get(name) is not None]
        # Sampled during the fit (pipeline/monitor.py), at their own times: the UI's System metrics tab.
        metrics += [Metric(name, float(value), sample["timestamp_ms"], step)
                    for step, sample in enumerate(trained.run.get("system_metrics", []))
                    for name, value in sample.items() if name != "timestamp_ms"]
        # MlflowClient.log_batch splits into the server's limits (100 params, 1000 metrics per request).
        client.log_batch(run_id, metrics=metrics, params=[Param(key, value) for key, value in params.items()])
        mlflow.log_dict(resolved, "config/params.json")
        mlflow.log_text(trained.summary, "model_summary.txt")
        for path in files:
            mlflow.log_artifact(str(path))
        model_uri = log_keras_model(trained.model, class_names, model_file=model_file)
        mlflow.set_tag("model_uri", model_uri)
    return {"run_id": run_id, "model_uri": model_uri}


def log_keras_model(model: Any, class_names: list[str], name: str = "model", model_file: Path | None = None) -> str:
    """Log a Keras model as a served pyfunc (`pipeline.serving.KerasClassifier` over its `.keras` file),
    with its class names, its output signature and the file's sha256; return its `models:/` URI.

    Args:
        model: the keras.Model.
        class_names: the name of each output, in order (the served answer's `class` and columns).
        name: the logged model's name in the run.
        model_file: the model's `.keras` file, logged byte for byte (the register stage's sha256 and the
            DVC output then name the same file); default: `model` saved canonically.

    No `input_example`: with one, MLflow reloads the saved model and predicts to validate the example
    as a serving request, which made tracking cost about 9 % of a small variant's training time.
    """
    import keras
    import mlflow
    import tensorflow as tf
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    from pipeline.io import write_json
    from pipeline.lineage import file_sha256
    from pipeline.model_files import save_model

    if len(class_names) != model.output_shape[-1]:
        raise ValueError(f"{len(class_names)} class names for a model of {model.output_shape[-1]} outputs")
    pyfunc_log = logging.getLogger("mlflow.pyfunc")
    level = pyfunc_log.level
    with tempfile.TemporaryDirectory() as scratch, warnings.catch_warnings():
        # MLflow's advice, printed by every training stage otherwise, does not apply: the signature is given
        # (no type hints or input example needed) and the pickled object is this project's class. Its
        # advice to type-hint `predict` is shown past any filter (MLflow sets its own), hence no display
        # at all while the model is logged (catch_warnings restores it).
        warnings.showwarning = lambda *args, **kwargs: None
        pyfunc_log.setLevel(logging.ERROR)
        try:
            # MLflow warns when the class is made.
            from pipeline.serving import CLASS_COLUMN, CLASSES_ARTIFACT, MODEL_ARTIFACT, KerasClassifier, output_columns

            # Outputs only. The served model takes base64 PNG/JPEG in a column `image` *or* pixel arrays,
            # and an MLflow input schema describes one of the two: enforcing it would refuse the other
            # before `KerasClassifier` sees it. `serving.check_images` checks every form and names what
            # is wrong.
            columns = output_columns(class_names)
            signature = ModelSignature(outputs=Schema([ColSpec("string", CLASS_COLUMN)] + [
                ColSpec("double", column) for column in columns[1:]]))
            if model_file is None:
                model_file = save_model(model, Path(scratch) / "model.keras")
            # A file, not model_config: MLflow logs model_config as run params, and a long list of names
            # would pass a param's length limit.
            classes_file = write_json(Path(scratch) / "class_names.json", columns[1:])
            info = mlflow.pyfunc.log_model(
                name=name, python_model=KerasClassifier(),
                artifacts={MODEL_ARTIFACT: str(model_file), CLASSES_ARTIFACT: str(classes_file)},
                model_config={"model_sha256": file_sha256(model_file)},
                signature=signature,
                # Stated, not inferred: inference re-imports the model in a subprocess (slow, offline-unsafe).
                pip_requirements=[f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}",
                                  f"mlflow=={mlflow.__version__}"],
            )
        finally:
            pyfunc_log.setLevel(level)
    return info.model_uri


@store_call("logging the evaluation to a run")
def log_evaluation(run_id: str, metrics: dict[str, float], files: list[Path], artifact_dir: str) -> None:
    """Add test metrics and pictures to an existing run (the variant's training run)."""
    import mlflow
    from mlflow.entities import Metric

    client = mlflow.MlflowClient()
    timestamp = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(key, float(value), timestamp, 0) for key, value in metrics.items()])
    for path in files:
        client.log_artifact(run_id, str(path), artifact_path=artifact_dir)


def find_runs(experiment_name: str, filter_string: str = "") -> list[Any]:
    import mlflow

    return mlflow.search_runs(experiment_names=[experiment_name], filter_string=filter_string,
                              output_format="list")


@store_call("marking a run failed")
def mark_failed(run_id: str) -> None:
    """Mark a run left RUNNING by a killed process as FAILED."""
    import mlflow

    mlflow.MlflowClient().set_terminated(run_id, status="FAILED")


def run_status(run_id: str) -> str:
    import mlflow

    return mlflow.MlflowClient().get_run(run_id).info.status


# --------------------------------------------------------------------------- hyperparameter studies

# An Optuna trial's end state as an MLflow run status: a pruned trial was stopped early on purpose (KILLED).
TRIAL_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


def start_study_run(experiment_id: str, run_id: str | None, run_name: str, params: dict[str, str],
                    tags: dict[str, str]) -> str:
    """The study's parent run: created with the search space as params, or reopened (RUNNING) when the
    study continues; its tags (the tuning settings of this invocation) are set either way.

    Returns:
        The parent run's id.
    """
    import mlflow
    from mlflow.entities import Param, RunTag

    client = mlflow.MlflowClient()
    if run_id is None:
        run_id = _create_run(client, experiment_id, run_name, {}).info.run_id
        client.log_batch(run_id, params=[Param(key, value) for key, value in params.items()])
    else:
        client.update_run(run_id, status="RUNNING")
    client.log_batch(run_id, tags=[RunTag(key, value) for key, value in tags.items()])
    return run_id


def log_trial_run(experiment_id: str, parent_run_id: str, trial: dict[str, Any], tags: dict[str, str]) -> str:
    """One finished trial as a child run of the study's run: its drawn params, per-epoch metrics (the
    training runs' names), its value, and its state (status KILLED when pruned, FAILED with the reason).

    Returns:
        The child run's id.
    """
    import mlflow
    from mlflow.entities import Metric, Param

    client = mlflow.MlflowClient()
    state = trial["state"]
    suffix = {"PRUNED": "-pruned", "FAIL": "-failed"}.get(state, "")
    run_tags = {"mlflow.parentRunId": parent_run_id, "trial": str(trial["number"]), "optuna_state": state,
                **tags}
    if trial.get("fail_reason"):
        run_tags["fail_reason"] = str(trial["fail_reason"])[:5000]
    run_id = _create_run(client, experiment_id, f"trial-{trial['number']}{suffix}", run_tags).info.run_id
    timestamp = int(time.time() * 1000)
    metrics = [Metric(f"epoch_{name}", float(value), timestamp, step)
               for name, values in trial.get("history", {}).items() for step, value in enumerate(values, start=1)]
    facts = {"val_accuracy": trial["value"] if state == "COMPLETE" else None, "epochs_run": trial.get("epochs_run"),
             "pruned_at_epoch": trial.get("pruned_at_epoch"), "train_seconds": trial.get("seconds")}
    metrics += [Metric(name, float(value), timestamp, 0) for name, value in facts.items() if value is not None]
    client.log_batch(run_id, metrics=metrics, params=[Param(key, str(value)) for key, value in trial["params"].items()])
    client.set_terminated(run_id, status=TRIAL_STATUS.get(state, "FAILED"))
    return run_id


def finish_study_run(run_id: str, metrics: dict[str, float], tags: dict[str, str], files: list[Path],
                     step: int) -> None:
    """End the study's parent run: the best trial's value and settings (tags: they change as a continued
    study finds better trials, and params cannot), trial counts at `step` (trials so far), the figures
    and the results file as artifacts under `study/`."""
    import mlflow
    from mlflow.entities import Metric, RunTag

    client = mlflow.MlflowClient()
    timestamp = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(key, float(value), timestamp, step) for key, value in metrics.items()],
                     tags=[RunTag(key, value) for key, value in tags.items()])
    for path in files:
        client.log_artifact(run_id, str(path), artifact_path="study")
    client.set_terminated(run_id, status="FINISHED")


# --------------------------------------------------------------------------- model registry


@store_call("registering a model version")
def register_version(model_uri: str, name: str, tags: dict[str, str]) -> str:
    """Register a logged model as a new version of `name`; return the version number."""
    import mlflow

    version = mlflow.register_model(model_uri, name, tags=tags)
    return str(version.version)


@store_call("moving a model alias")
def set_alias(name: str, alias: str, version: str) -> None:
    import mlflow

    mlflow.MlflowClient().set_registered_model_alias(name, alias, version)


def alias_version(name: str, alias: str) -> str | None:
    """The version an alias points at, or None (no such model or alias)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return str(mlflow.MlflowClient().get_model_version_by_alias(name, alias).version)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def version_tags(name: str, version: str) -> dict[str, str]:
    import mlflow

    return dict(mlflow.MlflowClient().get_model_version(name, version).tags)


def version_run_id(root: str | Path, name: str, version: str) -> str:
    """The MLflow run a registered version was made from (in the project's store, as `run_url` asks it)."""
    import mlflow

    _use(tracking_uri(root))
    return mlflow.MlflowClient().get_model_version(name, version).run_id


@store_call("tagging a model version")
def set_version_tag(name: str, version: str, key: str, value: str) -> None:
    import mlflow

    mlflow.MlflowClient().set_model_version_tag(name, version, key, value)


@store_call("describing a model version")
def describe_version(name: str, version: str, description: str) -> None:
    import mlflow

    mlflow.MlflowClient().update_model_version(name, version, description=description)


@store_call("adding a file to a run")
def log_run_text(run_id: str, text: str, artifact_file: str) -> None:
    import mlflow

    mlflow.MlflowClient().log_text(run_id, text, artifact_file)


@store_call("adding a file to a run")
def log_run_file(run_id: str, path: Path, artifact_dir: str) -> None:
    import mlflow

    mlflow.MlflowClient().log_artifact(run_id, str(path), artifact_dir)


def run_tags(run_id: str) -> dict[str, str]:
    import mlflow

    return dict(mlflow.MlflowClient().get_run(run_id).data.tags)


@store_call("tagging a run")
def log_run_tags(run_id: str, tags: dict[str, str]) -> None:
    import mlflow

    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_tag(run_id, key, value)


def download_model_file(model_uri: str, destination: Path) -> Path:
    """Download a logged/registered model and return its `.keras` file (tensorflow flavor layout)."""
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(destination)))
    candidates = sorted(local.rglob("*.keras"))
    if not candidates:
        found = sorted(path.name for path in local.rglob("*") if path.is_file())
        raise ModelFileError(f"{model_uri} holds no .keras file (found {found}); only the .keras format is loaded")
    return candidates[0]


def _ui_base(root: str | Path) -> str:
    """Where a browser finds the MLflow UI: $MLFLOW_UI_URL, the tracking server, or `make mlflow-ui`."""
    uri = tracking_uri(root)
    return (os.environ.get("MLFLOW_UI_URL") or (uri if uri.startswith("http") else "http://127.0.0.1:5000")).rstrip("/")


def artifact_url(root: str | Path, run_id: str, artifact_path: str) -> str:
    """A URL a browser can load one of a run's files from: the MLflow server's own artifact endpoint (the
    one its UI shows pictures with), so a page elsewhere (a Prefect artifact) can show the picture inline."""
    from urllib.parse import urlencode

    return f"{_ui_base(root)}/get-artifact?{urlencode({'path': artifact_path, 'run_uuid': run_id})}"


def run_url(root: str | Path, experiment_name: str, run_id: str) -> str:
    """A link to a run in the MLflow UI ($MLFLOW_UI_URL, the tracking server, or `make mlflow-ui`)."""
    import mlflow

    uri = tracking_uri(root)
    base = _ui_base(root)
    _use(uri)
    experiment = mlflow.get_experiment_by_name(experiment_name)
    experiment_id = experiment.experiment_id if experiment else "0"
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def find_version(name: str, run_id: str) -> str | None:
    """The version of `name` registered from `run_id`, or None when there is none.

    Only an answer of the registry means "not registered": a registry that cannot be asked (a server
    hiccup) raises, so a retry cannot register the same run twice.
    """
    import mlflow

    versions = mlflow.MlflowClient().search_model_versions(f"name = '{name}' and tags.run_id = '{run_id}'")
    return str(max(int(version.version) for version in versions)) if versions else None


def newest_training_run(experiment_name: str, model_digest: str) -> dict[str, str] | None:
    """The newest finished run that logged the model with this content digest, {"run_id", "model_uri"},
    or None.

    The digest (`model_files.content_digest`) names the model itself, whichever process, rerun or
    restored DVC cache put `models/<variant>/model.keras` there.
    """
    runs = find_runs(experiment_name, f"tags.model_digest = '{model_digest}' and attributes.status = 'FINISHED'")
    runs = [run for run in runs if "model_uri" in run.data.tags]
    if not runs:
        return None
    newest = max(runs, key=lambda run: run.info.start_time)
    return {"run_id": newest.info.run_id, "model_uri": newest.data.tags["model_uri"]}


def finished_training_run(run_id: str) -> dict[str, str] | None:
    """{"run_id", "model_uri"} of this run if it finished logging a model, else None (also when it is gone)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        run = mlflow.MlflowClient().get_run(run_id)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":  # e.g. deleted in the UI, or another store
            return None
        raise
    if run.info.status != "FINISHED" or "model_uri" not in run.data.tags:
        return None
    return {"run_id": run_id, "model_uri": run.data.tags["model_uri"]}


def find_training_run(experiment_name: str, model_digest: str) -> dict[str, str]:
    """`newest_training_run`, which must exist (the register stage registers the logged model)."""
    found = newest_training_run(experiment_name, model_digest)
    if found is None:
        raise RegistryError(
            f"no finished MLflow run in experiment {experiment_name!r} logged the model with digest "
            f"{model_digest[:12]}...; it was evaluated without tracking or in another MLflow store. "
            "Log it: python -m pipeline evaluate <variant>")
    return found
