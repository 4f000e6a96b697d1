"""The model registry for real (SQLite MLflow store): the gate, races, rollback, serving, predict.

Models of known quality are made by training the same variant for 0, 1 and 4 epochs on 2,000
images, so "worse", "tie" and "clearly better" are real outcomes, not mocked numbers.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from pipeline import tracking
from pipeline.config import load_params
from pipeline.dataset import load_prepared, normalise
from pipeline.errors import RegistryError
from pipeline.ingest import run_ingest
from pipeline.lineage import file_sha256
from pipeline.prepare import run_prepare
from pipeline.register import CHAMPION, gate_and_promote, rollback_champion
from tests.conftest import BIN, fit, make_project, run, tiny_params

pytestmark = pytest.mark.slow
NAME = "mnist-cnn"


class Registry:
    """A project with prepared data and helpers to register models of chosen quality."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.config = load_params(root / "params.yaml")
        self.data = load_prepared(root)
        tracking.setup(root, self.config.mlflow.experiment_name)

    def register(self, epochs: int) -> tuple[str, str]:
        """Train three_conv for `epochs` (0 = untrained), log and register it; (version, sha256)."""
        config = self.config
        if epochs:
            config = config.model_copy(update={"train": config.train.model_copy(update={"epochs": epochs})})
        with tempfile.TemporaryDirectory() as scratch:
            result = fit(config, "three_conv", self.data, Path(scratch)) if epochs else None
            model = result.model if result else _untrained(config, self.data)
            with tracking.training_run(tracking.setup(self.root, config.mlflow.experiment_name),
                                       f"epochs-{epochs}", {"variant": "three_conv"}) as run_id:
                uri = tracking.log_keras_model(model, self.data.class_names)
            sha256 = file_sha256(tracking.download_model_file(uri, Path(scratch) / "download"))
        version = tracking.register_version(uri, NAME, {"run_id": run_id, "model_sha256": sha256,
                                                        "class_names": json.dumps(self.data.class_names)})
        return version, sha256

    def gate(self, version: str, sha256: str) -> dict:
        return gate_and_promote(self.config, self.root, NAME, version, sha256, self.data)


def _untrained(config, data):
    from pipeline.models import build_model
    from pipeline.train import set_determinism

    set_determinism(config.seed)
    return build_model(config.variant("three_conv").layers, data.input_shape, data.num_classes)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    params = tiny_params(("three_conv",))
    params["data"]["max_images"] = 2000
    params["register"]["min_test_accuracy"] = 0.0  # these tests exercise the McNemar part of the gate
    project = make_project(tmp_path_factory.mktemp("registry") / "project", params)
    config = load_params(project / "params.yaml")
    run_ingest(config, project)
    run_prepare(config, project)
    return Registry(project)


@pytest.fixture(scope="module")
def versions(registry: Registry) -> dict[str, tuple[str, str]]:
    return {"weak": registry.register(0), "medium": registry.register(1), "strong": registry.register(4)}


def test_gate_outcomes(registry: Registry, versions: dict) -> None:
    weak, medium = versions["weak"], versions["medium"]
    first = registry.gate(*weak)
    assert first["promoted"] and first["previous_champion"] is None
    better = registry.gate(*medium)
    assert better["promoted"] and better["mcnemar"]["p_value"] < 0.05
    worse = registry.gate(*weak)
    assert not worse["promoted"] and "not significantly better" in worse["reason"]
    tie = registry.gate(*registry.register(1))  # the same training again: identical predictions
    assert not tie["promoted"] and tie["mcnemar"]["p_value"] == pytest.approx(1.0)
    assert tracking.alias_version(NAME, CHAMPION) == medium[0]


def test_rollback_moves_champion_back(registry: Registry, versions: dict) -> None:
    tracking.set_alias(NAME, CHAMPION, versions["weak"][0])
    tracking.set_version_tag(NAME, versions["weak"][0], "previous_champion", "none")
    assert registry.gate(*versions["strong"])["promoted"]
    moved = rollback_champion(registry.config, registry.root)
    assert moved == {"from": versions["strong"][0], "to": versions["weak"][0]}
    assert tracking.alias_version(NAME, CHAMPION) == versions["weak"][0]
    with pytest.raises(RegistryError, match="first champion"):
        rollback_champion(registry.config, registry.root)


def test_rollback_command(registry: Registry, versions: dict) -> None:
    tracking.set_alias(NAME, CHAMPION, versions["strong"][0])
    tracking.set_version_tag(NAME, versions["strong"][0], "previous_champion", versions["weak"][0])
    moved = run(["python", "-m", "pipeline", "rollback"], registry.root)
    assert f"champion moved from v{versions['strong'][0]} back to v{versions['weak'][0]}" in moved.stdout
    refused = run(["python", "-m", "pipeline", "rollback"], registry.root, check=False)
    assert refused.returncode == 2 and "first champion" in refused.stderr


def test_concurrent_promotions_end_on_the_better_version(registry: Registry, versions: dict) -> None:
    for _ in range(5):
        tracking.set_alias(NAME, CHAMPION, versions["weak"][0])
        threads = [threading.Thread(target=registry.gate, args=versions[key]) for key in ("medium", "strong")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert tracking.alias_version(NAME, CHAMPION) == versions["strong"][0]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_served_champion_answers_invocations(registry: Registry, versions: dict) -> None:
    tracking.set_alias(NAME, CHAMPION, versions["strong"][0])
    port = _free_port()
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{registry.root / 'mlflow.db'}",
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{NAME}@champion", "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=registry.root, env={**os.environ, **env}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                assert server.poll() is None, server.stdout.read() if server.stdout else ""
                time.sleep(1)
        images = normalise(registry.data.x_test[:8])
        answer = requests.post(f"http://127.0.0.1:{port}/invocations", json={"instances": images.tolist()},
                               timeout=60)
        assert answer.status_code == 200, answer.text
        rows = answer.json()["predictions"]  # one per image: its class name and each class's probability
        assert len(rows) == 8 and all(sorted(row) == sorted(["class", *registry.data.class_names]) for row in rows)
        expected = [registry.data.class_names[label] for label in registry.data.y_test[:8]]
        assert np.mean([row["class"] == name for row, name in zip(rows, expected, strict=True)]) >= 0.5
        wrong_shape = requests.post(f"http://127.0.0.1:{port}/invocations",
                                    json={"instances": np.zeros((2, 5, 5, 1)).tolist()}, timeout=60)
        assert 400 <= wrong_shape.status_code < 500
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_predict_cli_classifies_a_folder(registry: Registry, versions: dict, tmp_path: Path) -> None:
    tracking.set_alias(NAME, CHAMPION, versions["strong"][0])
    folder = tmp_path / "digits"
    folder.mkdir()
    for index in range(6):
        image = registry.data.x_test[index, :, :, 0]
        Image.fromarray(image).save(folder / f"digit_{index}.png")
    result = run(["python", "-m", "pipeline", "predict", str(folder)], registry.root)
    rows = [line.split() for line in result.stdout.strip().splitlines()]
    assert rows[0] == ["file", "class", "probability"]
    assert [row[0] for row in rows[1:]] == [f"digit_{index}.png" for index in range(6)]
    predicted = [int(row[1]) for row in rows[1:]]
    assert sum(p == t for p, t in zip(predicted, registry.data.y_test[:6], strict=True)) >= 4
    assert all(0 < float(row[2]) <= 1 for row in rows[1:])
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(folder / "tiny.png")
    bad = run(["python", "-m", "pipeline", "predict", str(folder)], registry.root, check=False)
    assert bad.returncode == 2 and "tiny.png" in bad.stderr and "expected 28x28" in bad.stderr


def test_disagreement_picture_shows_the_gates_discordant_images(registry: Registry, versions: dict) -> None:
    """The picture is drawn from the champion scored again: its counts must be the gate's, or it fails."""
    from pipeline.register import disagreement_picture, test_probabilities

    tracking.set_alias(NAME, CHAMPION, versions["weak"][0])
    decision = {**registry.gate(*versions["strong"]), "model_name": NAME, "version": versions["strong"][0]}
    assert decision["mcnemar"]["table"][1][0] > 0  # the strong model fixes images the untrained one gets wrong
    probabilities = test_probabilities(f"models:/{NAME}/{versions['strong'][0]}", versions["strong"][1],
                                       registry.data.x_test)
    picture = disagreement_picture(registry.root, decision, registry.data, probabilities.argmax(axis=1),
                                   probabilities.max(axis=1))
    assert picture == registry.root / "reports" / "disagreement.png"
    assert Image.open(picture).size[0] > 800
    wrong_counts = {**decision, "mcnemar": {**decision["mcnemar"], "table": [[0, 0], [0, 0]]}}
    with pytest.raises(RegistryError, match="scored differently than at the gate"):
        disagreement_picture(registry.root, wrong_counts, registry.data, probabilities.argmax(axis=1),
                             probabilities.max(axis=1))
    first = {**decision, "mcnemar": None, "previous_champion": None}  # no champion: no comparison to show
    assert disagreement_picture(registry.root, first, registry.data, probabilities.argmax(axis=1),
                                probabilities.max(axis=1)) is None
    assert not picture.exists()
