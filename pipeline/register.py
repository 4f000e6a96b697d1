"""The `register` stage: register the best variant, promote it to `champion` only through the gate.

Selection uses validation accuracy; the gate uses the test set:
1. test accuracy >= register.min_test_accuracy, and
2. when a champion exists: on the same (current) test images, the challenger is more accurate and
   McNemar's exact test on the paired right/wrong outcomes gives p < register.alpha.
The check-and-set runs under a lock (a file lock, or a PostgreSQL advisory lock when
PIPELINE_REGISTRY_LOCK_DSN is set) so that two promotions at once cannot leave the worse model
as champion; the alias is re-read after it is set.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import tracking
from pipeline.config import PipelineConfig
from pipeline.dataset import load_prepared, model_outputs
from pipeline.errors import MissingInputError, RegistryError
from pipeline.io import read_json, write_json, write_text
from pipeline.layout import Layout
from pipeline.lineage import file_sha256
from pipeline.model_files import content_digest, load_model_checked

CHAMPION, CHALLENGER = "champion", "challenger"
REGISTRATION_ARTIFACTS = "registration"  # where the run of a registered version holds the gate's pictures


def mcnemar_exact_p(champion_only: int, challenger_only: int) -> float:
    """McNemar's exact test: the two-sided binomial p-value of the discordant pairs (images exactly one
    of the two models gets right), as statsmodels' `mcnemar(table, exact=True)` computes it
    (tests/unit/test_gate.py compares the two). Written out because importing statsmodels (and SciPy's
    stats with it) cost the register stage 0.7 s, for a sum of binomial coefficients.
    """
    discordant = champion_only + challenger_only
    tail = sum(math.comb(discordant, k) for k in range(min(champion_only, challenger_only) + 1))
    return min(1.0, 2 * tail / 2 ** discordant)


def mcnemar_gate(challenger_correct: np.ndarray, champion_correct: np.ndarray, alpha: float) -> dict[str, Any]:
    """Paired comparison of two models on the same images (McNemar's exact binomial test).

    Args:
        challenger_correct: boolean per test image, the challenger classified it right.
        champion_correct: the same for the champion.
        alpha: significance level.

    Returns:
        The 2x2 table, p-value, accuracies and whether the challenger is significantly better.
    """
    if challenger_correct.shape != champion_correct.shape:
        raise ValueError("both models must be scored on the same test images")
    table = np.array([
        [np.sum(champion_correct & challenger_correct), np.sum(champion_correct & ~challenger_correct)],
        [np.sum(~champion_correct & challenger_correct), np.sum(~champion_correct & ~challenger_correct)],
    ])
    challenger_accuracy, champion_accuracy = float(challenger_correct.mean()), float(champion_correct.mean())
    p_value = mcnemar_exact_p(int(table[0, 1]), int(table[1, 0]))
    return {
        "table": table.tolist(),  # rows: champion right/wrong; columns: challenger right/wrong
        "p_value": p_value,
        "challenger_accuracy": challenger_accuracy,
        "champion_accuracy": champion_accuracy,
        "better": bool(challenger_accuracy > champion_accuracy and p_value < alpha),
    }


@contextlib.contextmanager
def promotion_lock(model_name: str, root: Path, timeout_seconds: float = 600) -> Iterator[None]:
    """Serialise promotions of one registered model on one tracking store."""
    key = f"{tracking.tracking_uri(root)}#{model_name}"
    dsn = os.environ.get("PIPELINE_REGISTRY_LOCK_DSN")
    if dsn:
        import psycopg2

        lock_id = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)
        connection = psycopg2.connect(dsn, connect_timeout=10)
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_lock(%s)", (lock_id,))
            yield
        finally:
            connection.close()  # ends the session, which releases the advisory lock
        return
    from filelock import FileLock

    lock_dir = Path(os.environ.get("PIPELINE_LOCK_DIR", Path(tempfile.gettempdir()) / "cnn-pipeline-locks"))
    lock_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(lock_dir / f"registry-{hashlib.sha256(key.encode()).hexdigest()[:16]}.lock",
                  timeout=timeout_seconds):
        yield


def test_probabilities(model_uri: str, expected_sha256: str | None, images: np.ndarray) -> np.ndarray:
    """Class probabilities (N, classes) of a registered model for uint8 `images`, the model loaded as a
    checked `.keras` file in safe mode."""
    with tempfile.TemporaryDirectory() as scratch:
        model = load_model_checked(tracking.download_model_file(model_uri, Path(scratch)), expected_sha256)
        return model_outputs(model, images, 512)


def test_predictions(model_uri: str, expected_sha256: str | None, images: np.ndarray) -> np.ndarray:
    """Predicted classes of a registered model (see `test_probabilities`)."""
    return test_probabilities(model_uri, expected_sha256, images).argmax(axis=1)


def decide(config: PipelineConfig, name: str, version: str, sha256: str, data: Any,
           challenger_predicted: np.ndarray | None = None) -> dict[str, Any]:
    """Apply the gate to `version` against the current champion (call under the lock).

    `challenger_predicted`: the version's test predictions when already known (register_best reads
    them from the evaluate stage after checking the registered file holds the evaluated model);
    otherwise the registered model is downloaded and run.
    """
    settings = config.registration
    if challenger_predicted is None:
        challenger_predicted = test_predictions(f"models:/{name}/{version}", sha256, data.x_test)
    challenger_correct = challenger_predicted == data.y_test
    accuracy = float(challenger_correct.mean())
    decision: dict[str, Any] = {"test_accuracy": accuracy, "min_test_accuracy": settings.min_test_accuracy,
                                "alpha": settings.alpha, "previous_champion": None, "mcnemar": None}
    if accuracy < settings.min_test_accuracy:
        return {**decision, "promoted": False,
                "reason": f"test accuracy {accuracy:.4f} is below register.min_test_accuracy "
                          f"{settings.min_test_accuracy}"}
    champion = tracking.alias_version(name, CHAMPION)
    decision["previous_champion"] = champion
    if champion is None:
        return {**decision, "promoted": True, "reason": "no champion yet and the accuracy threshold is met"}
    if champion == version:
        return {**decision, "promoted": False, "reason": f"v{version} is already the champion"}
    champion_sha = tracking.version_tags(name, champion).get("model_sha256")
    champion_correct = test_predictions(f"models:/{name}/{champion}", champion_sha, data.x_test) == data.y_test
    gate = mcnemar_gate(challenger_correct, champion_correct, settings.alpha)
    decision["mcnemar"] = gate
    if gate["better"]:
        reason = (f"better than champion v{champion} ({gate['challenger_accuracy']:.4f} vs "
                  f"{gate['champion_accuracy']:.4f}, McNemar p={gate['p_value']:.4g} < {settings.alpha})")
    else:
        reason = (f"not significantly better than champion v{champion} ({gate['challenger_accuracy']:.4f} vs "
                  f"{gate['champion_accuracy']:.4f}, McNemar p={gate['p_value']:.4g}, alpha {settings.alpha})")
    return {**decision, "promoted": gate["better"], "reason": reason}


def promote(name: str, version: str, previous: str | None) -> None:
    """Point `champion` at `version`, record the promotion on the version, verify by re-reading."""
    tracking.set_version_tag(name, version, "previous_champion", previous or "none")
    tracking.set_version_tag(name, version, "promoted_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    tracking.set_alias(name, CHAMPION, version)
    if tracking.alias_version(name, CHAMPION) != version:
        raise RegistryError(f"{name}: champion alias did not stick on v{version}; another writer changed it")


def gate_and_promote(config: PipelineConfig, root: Path, name: str, version: str, sha256: str,
                     data: Any, challenger_predicted: np.ndarray | None = None) -> dict[str, Any]:
    """Decide and, if the gate passes, promote: one atomic check-and-set under the promotion lock."""
    with promotion_lock(name, root):
        decision = decide(config, name, version, sha256, data, challenger_predicted)
        if decision["promoted"]:
            promote(name, version, decision["previous_champion"])
    return decision


def evaluated_predictions(root: Path, variant: str, data: Any) -> tuple[np.ndarray, np.ndarray]:
    """The class indices the evaluate stage predicted for the test split, checked against it, and the
    probability of each prediction: (classes, probabilities)."""
    import pandas as pd

    path = Layout(root).predictions_file(variant)
    if not path.is_file():
        raise MissingInputError(f"{path} is missing; evaluate the variant first (dvc repro)")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    index = {name: number for number, name in enumerate(data.class_names)}
    expected = [data.class_names[int(label)] for label in data.y_test]
    if list(table.get("actual", [])) != expected or not set(table.get("predicted", [])) <= set(index):
        raise RegistryError(f"{path} does not match the test split in data/prepared (stale or edited); "
                         "rerun the evaluate stage: dvc repro -f evaluate")
    return table["predicted"].map(index).to_numpy(dtype=np.int64), table["probability"].to_numpy(dtype=float)


def disagreement_picture(root: Path, decision: dict[str, Any], data: Any, challenger_predicted: np.ndarray,
                         challenger_confidence: np.ndarray) -> Path | None:
    """Draw where the challenger and the champion it was gated against disagree (the images behind
    McNemar's two discordant counts) into reports/disagreement.png; None when there was no comparison.

    The champion is scored again here rather than kept from the gate, so that the gate under the
    promotion lock stays as short as it can be; both scorings load the same checked file.
    """
    gate, champion = decision.get("mcnemar"), decision.get("previous_champion")
    path = Layout(root).disagreement_figure
    if not gate or not champion:
        path.unlink(missing_ok=True)  # a picture of an earlier comparison would say something untrue
        return None
    from pipeline import plots  # matplotlib: imported only when there is a picture to draw
    name = decision["model_name"]
    probabilities = test_probabilities(f"models:/{name}/{champion}",
                                       tracking.version_tags(name, champion).get("model_sha256"), data.x_test)
    champion_predicted = probabilities.argmax(axis=1)
    champion_only = int(np.sum((champion_predicted == data.y_test) & (challenger_predicted != data.y_test)))
    challenger_only = int(np.sum((champion_predicted != data.y_test) & (challenger_predicted == data.y_test)))
    if [champion_only, challenger_only] != [gate["table"][0][1], gate["table"][1][0]]:
        raise RegistryError(f"champion v{champion} scored differently than at the gate ({champion_only} and "
                            f"{challenger_only} discordant images, the gate counted {gate['table']})")
    figure = plots.disagreement_figure(
        data.x_test, data.y_test, champion_predicted, probabilities.max(axis=1), challenger_predicted,
        challenger_confidence, data.class_names, champion=f"champion v{champion}",
        challenger=f"challenger v{decision['version']}")
    return plots.save_figure(figure, path)


def run_register(config: PipelineConfig, root: Path) -> dict[str, Any]:
    """The whole `register` stage: select, register, gate, promote, write registry.json and the card.

    Returns:
        The decision written to reports/registry.json.
    """
    from pipeline.compare import leaderboard
    from pipeline.model_card import model_card

    name = config.registration.model_name
    layout = Layout(root)
    table = leaderboard(config, root)
    variant = str(table.iloc[0]["variant"])
    training = read_json(layout.training_file(variant))
    metrics = read_json(layout.metrics_file(variant))
    data = load_prepared(layout, splits=("test",))
    predicted, confidence = evaluated_predictions(root, variant, data)
    tracking.setup(root, config.mlflow.experiment_name)
    run = tracking.find_training_run(config.mlflow.experiment_name, training["model_digest"])
    run_tags = tracking.run_tags(run["run_id"])
    with tempfile.TemporaryDirectory() as scratch:
        logged = tracking.download_model_file(run["model_uri"], Path(scratch))
        sha256 = file_sha256(logged)
        # The gate uses the evaluate stage's predictions: valid only for the very model it scored.
        if content_digest(logged) != training["model_digest"]:
            raise RegistryError(f"the model logged by MLflow run {run['run_id']} is not the one in "
                                f"{layout.model_dir(variant)} that the evaluate stage scored; retrain "
                                f"the variant: dvc repro -f train@{variant}")
    tags = {"run_id": run["run_id"], "variant": variant, "git_commit": run_tags.get("git_commit", "unknown"),
            "data_version": training["data_version"], "params_hash": training["params_hash"],
            "model_sha256": sha256, "val_accuracy": f"{metrics['val_accuracy']:.4f}",
            "test_accuracy": f"{metrics['test_accuracy']:.4f}", "class_names": json.dumps(data.class_names)}
    # Idempotent per run: a retried or repeated stage reuses the version it registered before.
    version = tracking.find_version(name, run["run_id"]) or tracking.register_version(run["model_uri"], name, tags)
    tracking.set_alias(name, CHALLENGER, version)
    decision = gate_and_promote(config, root, name, version, sha256, data, challenger_predicted=predicted)
    decision.update({"model_name": name, "version": version, "variant": variant, "run_id": run["run_id"],
                     "val_accuracy": metrics["val_accuracy"], "champion": tracking.alias_version(name, CHAMPION),
                     "decided_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **{
                         key: tags[key] for key in ("git_commit", "data_version", "params_hash", "model_sha256")}})
    picture = disagreement_picture(root, decision, data, predicted, confidence)
    decision["disagreement_picture"] = None if picture is None else str(picture.relative_to(root))
    card = model_card(root, variant, decision, table)
    tracking.describe_version(name, version, card)
    tracking.log_run_text(run["run_id"], card, "model_card.md")
    if picture is not None:
        tracking.log_run_file(run["run_id"], picture, REGISTRATION_ARTIFACTS)
    tracking.log_run_tags(run["run_id"], {"registered_version": version,
                                          "gate": "promoted" if decision["promoted"] else "not promoted"})
    # Written last: the files record only a decision the registry has already taken.
    write_json(layout.registry_file, decision)
    write_text(layout.model_card_file, card)
    return decision


def rollback_champion(config: PipelineConfig, root: Path) -> dict[str, str]:
    """Move `champion` back to the version it replaced (recorded when it was promoted)."""
    name = config.registration.model_name
    tracking.setup(root, config.mlflow.experiment_name)
    with promotion_lock(name, root):
        current = tracking.alias_version(name, CHAMPION)
        if current is None:
            raise RegistryError(f"{name} has no champion to roll back")
        previous = tracking.version_tags(name, current).get("previous_champion", "none")
        if previous == "none":
            raise RegistryError(f"{name} v{current} was the first champion; there is no earlier one to go back to")
        tracking.set_alias(name, CHAMPION, previous)
        tracking.set_version_tag(name, current, "rolled_back_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return {"from": current, "to": previous}
