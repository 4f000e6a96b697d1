"""Fit hand-written variant candidates on the project's prepared data: fit seconds, validation and test
accuracy of each (the README's "The tuning run behind the champion").

    python -m benchmarks.candidates [--only NAME ...]     # after make repro (reads data/prepared)

Each candidate in benchmarks/candidates.yaml is a `models.<name>` block of params.yaml, resolved
against the shipped params (so a candidate's `train` block overrides the global one) and fitted with
the train stage's `fit_variant`. The test split is read only to report: compare candidates on their
validation accuracy, as the pipeline chooses. Results: benchmarks/candidates_results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import yaml

from pipeline.checkpoint import WorkDir
from pipeline.config import parse_params, read_params_file
from pipeline.dataset import load_prepared, model_outputs
from pipeline.train import fit_variant

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def accuracy(model: object, images: np.ndarray, labels: np.ndarray) -> float:
    return float((model_outputs(model, images, 512).argmax(axis=1) == labels).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="fit only these candidates")
    parser.add_argument("--out", type=Path, default=HERE / "candidates_results.jsonl")
    arguments = parser.parse_args()
    candidates = yaml.safe_load((HERE / "candidates.yaml").read_text())["candidates"]
    raw = read_params_file(ROOT / "params.yaml")
    config = parse_params({**raw, "models": {**raw["models"], **candidates}})
    data = load_prepared(ROOT)
    lines = []
    for name in arguments.only or list(candidates):
        with tempfile.TemporaryDirectory(prefix="candidate-") as scratch:
            work = WorkDir(Path(scratch) / "work", "candidate")
            work.open()
            trained = fit_variant(config.variant(name), data, work, verbose=0)
        result = {"name": name, "params": int(trained.model.count_params()), "fit_s": trained.run["train_seconds"],
                  "epochs": trained.training["epochs_run"], "val": accuracy(trained.model, data.x_val, data.y_val),
                  "test": accuracy(trained.model, data.x_test, data.y_test)}
        print(json.dumps(result), flush=True)
        lines.append(json.dumps(result) + "\n")
    arguments.out.write_text("".join(lines))


if __name__ == "__main__":
    main()
