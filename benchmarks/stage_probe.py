"""One pipeline stage in one process, with its imports timed first and its phases timed by wrappers.

    python -X importtime -m benchmarks.stage_probe <spec.json> <result.json>

Run from inside a project copy (its `pipeline` package comes first on sys.path). The stage is the
CLI command function itself (`pipeline.cli.train` etc., the same code `dvc repro` runs); the
wrappers only read the clock, so the work done is the stage's own.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

# (label, "module:attribute", parent label or None). Children are part of their parent's time.
PHASES: dict[str, list[tuple[str, str, str | None]]] = {
    "train": [
        ("read params", "pipeline.cli:_config", None),
        ("data version (dvc_md5)", "pipeline.lineage:dvc_md5", None),
        ("git commit", "pipeline.lineage:git_commit", None),
        ("tracking setup", "pipeline.tracking:setup", None),
        ("load prepared data", "pipeline.prepare:load_prepared", None),
        ("fit_variant", "pipeline.train:fit_variant", None),
        ("seed + op determinism", "pipeline.train:set_determinism", "fit_variant"),
        ("build model", "pipeline.train:build_model", "fit_variant"),
        ("compile", "keras:Model.compile", "fit_variant"),
        ("fit", "keras:Model.fit", "fit_variant"),
        ("model summary", "keras:Model.summary", "fit_variant"),
        ("save model files (x2: work dir, models/)", "pipeline.train:save_trained", None),
        ("MLflow logging (_track)", "pipeline.train:_track", None),
        ("params, metrics, artifacts", "pipeline.tracking:log_training", "MLflow logging (_track)"),
        ("log_keras_model", "pipeline.tracking:log_keras_model", "MLflow logging (_track)"),
        ("signature inference", "mlflow.models:infer_signature", "log_keras_model"),
    ],
    "evaluate": [
        ("read params", "pipeline.cli:_config", None),
        ("load trained model", "pipeline.train:load_trained", None),
        ("load prepared data", "pipeline.prepare:load_prepared", None),
        ("evaluate_model", "pipeline.evaluate:evaluate_model", None),
        ("predict (test + val)", "pipeline.evaluate:predict_probabilities", "evaluate_model"),
        ("sklearn report", "pipeline.evaluate:classification_report", "evaluate_model"),
        ("feature maps (probe model)", "pipeline.evaluate:feature_maps", "evaluate_model"),
        ("draw figures", "pipeline.plots:error_gallery", "evaluate_model"),
        ("draw figures", "pipeline.plots:confusion_matrix_figure", "evaluate_model"),
        ("draw figures", "pipeline.plots:learning_curves_figure", "evaluate_model"),
        ("draw figures", "pipeline.plots:filters_figure", "evaluate_model"),
        ("draw figures", "pipeline.plots:feature_maps_figure", "evaluate_model"),
        ("write reports", "pipeline.evaluate:write_evaluation", None),
        ("save PNGs", "pipeline.plots:save_figure", "write reports"),
        ("tracking setup", "pipeline.tracking:setup", None),
        ("log metrics + pictures", "pipeline.tracking:log_evaluation", None),
    ],
    "register": [
        ("read params", "pipeline.cli:_config", None),
        ("leaderboard", "pipeline.compare:leaderboard", None),
        ("load prepared data", "pipeline.prepare:load_prepared", None),
        ("tracking setup", "pipeline.tracking:setup", None),
        ("evaluate stage's predictions", "pipeline.register:evaluated_predictions", None),
        ("download model files", "pipeline.tracking:download_model_file", None),
        ("content digests (h5py)", "pipeline.register:keras_content_digest", None),
        ("register version", "pipeline.tracking:register_version", None),
        ("gate (McNemar) + promote", "pipeline.register:gate_and_promote", None),
        ("test predictions (load + predict)", "pipeline.register:test_predictions", "gate (McNemar) + promote"),
        ("model card", "pipeline.model_card:model_card", None),
        ("registry updates (aliases, tags)", "pipeline.tracking:describe_version", None),
        ("registry updates (aliases, tags)", "pipeline.tracking:log_run_text", None),
        ("registry updates (aliases, tags)", "pipeline.tracking:log_run_tags", None),
    ],
}
# What each stage imports, in the order the stage imports it (`python -m pipeline` first loads cli).
IMPORTS = {
    "train": ["pipeline.cli", "pipeline.train", "pipeline.lineage", "dvc_data.hashfile.build", "dvc.fs", "mlflow",
              "tensorflow", "keras", "pandas", "mlflow.tensorflow", "mlflow.models"],
    "evaluate": ["pipeline.cli", "pipeline.evaluate", "pipeline.train", "tensorflow", "keras", "mlflow"],
    "register": ["pipeline.cli", "pipeline.register", "pipeline.compare", "pipeline.model_card", "mlflow", "h5py"],
}


def main() -> None:
    spec_file, result_file = Path(sys.argv[1]), Path(sys.argv[2])
    spec = json.loads(spec_file.read_text())
    stage, arguments = spec["stage"], spec.get("arguments", [])
    started = time.perf_counter()
    imports: dict[str, float] = {}
    for module in IMPORTS[stage]:
        begun = time.perf_counter()
        __import__(module)  # the C import path: -X importtime prints a line for the module itself
        imports[module] = time.perf_counter() - begun
    imported = time.perf_counter()

    from benchmarks.instruments import phase_timers
    from pipeline import cli

    totals: dict[str, float] = {}
    targets = {f"{label}#{index}": target for index, (label, target, _) in enumerate(PHASES[stage])}
    with phase_timers(targets, totals):
        getattr(cli, stage)(*arguments, params=Path("params.yaml"), root=Path("."))
    finished = time.perf_counter()
    phases: dict[str, dict[str, Any]] = {}
    for index, (label, _, parent) in enumerate(PHASES[stage]):
        entry = phases.setdefault(label, {"seconds": 0.0, "parent": parent})
        entry["seconds"] += totals.get(f"{label}#{index}", 0.0)
    result = {"stage": stage, "arguments": arguments, "imports_seconds": imported - started,
              "imports": imports, "stage_seconds": finished - imported, "in_process_seconds": finished - started,
              "phases": phases}
    result_file.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
