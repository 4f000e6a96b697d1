"""Concurrent promotions (issue 7, fault 5): threads and separate processes, against the SQLite store
and against a PostgreSQL-backed MLflow server with the PostgreSQL advisory lock.

Models of known quality (three_conv trained 0, 1 and 4 epochs on 2,000 images, as in
tests/integration/test_registry.py) are trained once and registered once per store; each
repetition only resets `champion` to the weak version and lets the medium and the strong
challenger race through `gate_and_promote`, started at the same instant.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from psycopg2 import sql

from pipeline import tracking
from pipeline.config import load_params
from pipeline.dataset import load_prepared
from pipeline.ingest import run_ingest
from pipeline.lineage import file_sha256
from pipeline.prepare import run_prepare
from pipeline.register import CHAMPION, gate_and_promote
from tests.conftest import make_project, tiny_params
from tests.reliability.faults import free_port, mlflow_server_command, running, wait_healthy

pytestmark = pytest.mark.slow

NAME = "mnist-cnn"
REPETITIONS = 6
PG = "postgres@127.0.0.1:5432"
EPOCHS = {"weak": 0, "medium": 1, "strong": 4}


@pytest.fixture(autouse=True)
def _quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per model download otherwise


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    params = tiny_params(("three_conv",))
    params["data"]["max_images"] = 2000
    params["register"]["min_test_accuracy"] = 0.0  # the race is about the McNemar part of the gate
    root = make_project(tmp_path_factory.mktemp("races") / "project", params)
    config = load_params(root / "params.yaml")
    run_ingest(config, root)
    run_prepare(config, root)
    return root


@pytest.fixture(scope="module")
def models(project: Path) -> dict[str, Any]:
    """The three Keras models, trained once (0 epochs: the seeded initial weights)."""
    from pipeline.models import build_model
    from pipeline.train import set_determinism
    from tests.conftest import fit

    config = load_params(project / "params.yaml")
    data = load_prepared(project)
    trained = {}
    for quality, epochs in EPOCHS.items():
        if epochs:
            settings = config.model_copy(update={"train": config.train.model_copy(update={"epochs": epochs})})
            with tempfile.TemporaryDirectory() as scratch:
                trained[quality] = fit(settings, "three_conv", data, Path(scratch)).model
        else:
            set_determinism(config.seed)
            trained[quality] = build_model(config.variant("three_conv").layers, data.input_shape, data.num_classes)
    return trained


def register(project: Path, models: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Log and register each model in the tracking store in force; {quality: (version, sha256)}."""
    config = load_params(project / "params.yaml")
    data = load_prepared(project)
    versions = {}
    for quality, model in models.items():
        experiment_id = tracking.setup(project, config.mlflow.experiment_name)
        with tracking.training_run(experiment_id, quality, {"variant": "three_conv"}) as run_id:
            uri = tracking.log_keras_model(model, data.class_names)
        with tempfile.TemporaryDirectory() as scratch:
            sha256 = file_sha256(tracking.download_model_file(uri, Path(scratch)))
        version = tracking.register_version(uri, NAME, {"run_id": run_id, "model_sha256": sha256,
                                                        "class_names": json.dumps(data.class_names)})
        versions[quality] = (version, sha256)
    return versions


# --- the racers: threads in this process, or spawned worker processes -------------------------

_WORKER: dict[str, Any] = {}
STORE_VARIABLES = ("MLFLOW_TRACKING_URI", "PIPELINE_REGISTRY_LOCK_DSN", "PIPELINE_LOCK_DIR")


def _init_worker(root: str) -> None:
    """A spawned process: config and data loaded once (TensorFlow imported once)."""
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    config = load_params(Path(root) / "params.yaml")
    _WORKER.update(config=config, root=Path(root), data=load_prepared(Path(root)))


def _gate_at(start_at: float, store: dict[str, str], version: str, sha256: str) -> dict[str, Any]:
    """In a worker: point at `store` (its tracking URI and lock settings), wait for `start_at`, gate."""
    for key in STORE_VARIABLES:
        if key in store:
            os.environ[key] = store[key]
        else:
            os.environ.pop(key, None)
    tracking.setup(_WORKER["root"], _WORKER["config"].mlflow.experiment_name)
    time.sleep(max(0.0, start_at - time.time()))
    return gate_and_promote(_WORKER["config"], _WORKER["root"], NAME, version, sha256, _WORKER["data"])


@pytest.fixture(scope="module")
def workers(project: Path) -> Iterator[Any]:
    """Two spawned processes, shared by both stores."""
    with multiprocessing.get_context("spawn").Pool(2, initializer=_init_worker, initargs=(str(project),)) as pool:
        pool.map(time.sleep, [0, 0])  # both are up before the first race
        yield pool


def race_threads(project: Path, versions: dict, repetitions: int) -> Counter:
    config = load_params(project / "params.yaml")
    data = load_prepared(project)
    orders: Counter = Counter()
    for _ in range(repetitions):
        tracking.set_alias(NAME, CHAMPION, versions["weak"][0])
        barrier = threading.Barrier(2)
        decisions: dict[str, dict] = {}

        def gate(quality: str, barrier: threading.Barrier, decisions: dict[str, dict]) -> None:
            barrier.wait()  # both start at the same instant
            decisions[quality] = gate_and_promote(config, project, NAME, *versions[quality], data)

        threads = [threading.Thread(target=gate, args=(quality, barrier, decisions))
                   for quality in ("medium", "strong")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=600)
        orders[_order(decisions, versions)] += 1
        assert tracking.alias_version(NAME, CHAMPION) == versions["strong"][0], decisions
    return orders


def race_processes(pool: Any, versions: dict, repetitions: int, store: dict[str, str]) -> Counter:
    orders: Counter = Counter()
    for _ in range(repetitions):
        tracking.set_alias(NAME, CHAMPION, versions["weak"][0])
        start_at = time.time() + 0.5
        pending = {quality: pool.apply_async(_gate_at, (start_at, store, *versions[quality]))
                   for quality in ("medium", "strong")}
        decisions = {quality: result.get(timeout=600) for quality, result in pending.items()}
        orders[_order(decisions, versions)] += 1
        assert tracking.alias_version(NAME, CHAMPION) == versions["strong"][0], decisions
    return orders


def _order(decisions: dict[str, dict], versions: dict) -> str:
    """Which racer held the lock first, read from what each saw as the champion."""
    medium_first = decisions["strong"]["previous_champion"] == versions["medium"][0]
    return "medium first" if medium_first else "strong first"


# --- the two stores ----------------------------------------------------------------------------


@pytest.fixture
def postgres_database() -> Iterator[str]:
    name = f"rel_races_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg2.connect(dbname="postgres", host="127.0.0.1", port=5432, user="postgres", connect_timeout=5)
    except psycopg2.OperationalError as error:
        pytest.skip(f"PostgreSQL is not reachable on 127.0.0.1:5432 as postgres: {error}")
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        with admin.cursor() as cursor:
            cursor.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.close()


def test_concurrent_promotions_sqlite_store(project: Path, models: dict, workers: Any) -> None:
    """Fault: two promotions of the same registered model at the same instant (medium and strong
    challenger vs a weak champion), 10 times with two threads and 10 times with two spawned
    processes, on the SQLite tracking store with the file lock (PIPELINE_LOCK_DIR).
    Expected: `champion` ends on the strong version after every repetition, whichever racer got
    the lock first. Tolerance: none (10/10 for each kind of racer).
    """
    versions = register(project, models)
    started = time.monotonic()
    threads = race_threads(project, versions, REPETITIONS)
    middle = time.monotonic()
    processes = race_processes(workers, versions, REPETITIONS, {"PIPELINE_LOCK_DIR": os.environ["PIPELINE_LOCK_DIR"]})
    print(f"\n[fault 5] SQLite + file lock: threads {dict(threads)} in {middle - started:.0f}s, "
          f"processes {dict(processes)} in {time.monotonic() - middle:.0f}s; champion = strong every time")


def test_concurrent_promotions_postgres_server(project: Path, models: dict, workers: Any, tmp_path: Path,
                                               postgres_database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault: as for the SQLite store, against a real `mlflow server` on a PostgreSQL backend store,
    with PIPELINE_REGISTRY_LOCK_DSN set (the PostgreSQL advisory lock); 10 repetitions with threads
    and 10 with spawned processes.
    Expected: `champion` ends on the strong version after every repetition.
    Tolerance: none (10/10 for each kind of racer).
    """
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    command = mlflow_server_command(f"postgresql+psycopg2://{PG}/{postgres_database}", tmp_path / "artifacts", port)
    with running(command, tmp_path, log) as server:
        server_seconds = wait_healthy(f"{uri}/health", server, log)
        store = {"MLFLOW_TRACKING_URI": uri, "PIPELINE_REGISTRY_LOCK_DSN": f"postgresql://{PG}/{postgres_database}"}
        for key, value in store.items():
            monkeypatch.setenv(key, value)
        versions = register(project, models)
        started = time.monotonic()
        threads = race_threads(project, versions, REPETITIONS)
        middle = time.monotonic()
        processes = race_processes(workers, versions, REPETITIONS, store)
        print(f"\n[fault 5] PostgreSQL server + advisory lock (server up in {server_seconds:.0f}s): threads "
              f"{dict(threads)} in {middle - started:.0f}s, processes {dict(processes)} in "
              f"{time.monotonic() - middle:.0f}s; champion = strong every time")
