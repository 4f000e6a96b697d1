"""Would averaging the default run's variants beat the champion? Validation and test accuracy of every
combination of the trained models that includes the champion's variant (issue 14, "ensembles").

    python -m benchmarks.ensembles             # after make repro (reads models/ and data/prepared)
    python -m benchmarks.ensembles --seeds 3   # also: the champion's variant fitted with 2 more seeds

`--seeds N` fits the champion's variant N - 1 more times with the seeds after params.yaml's (as
`train.seeds` does, `fit_variant` on data/prepared) and reports the average of the first k seeds' models
for k = 1..N, with the fit seconds each extra model costs the default run.

Each combination predicts the class with the highest sum of its members' softmax probabilities. The test
split is read only to report: a combination would be chosen on its validation accuracy, as the pipeline
chooses a champion. Measured on the committed models (README, Known gaps): no combination beats
relu_layers alone on validation (0.9834); the best on test, with same_dropout_dense1000, is 0.9805 at
0.9762 validation.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from pathlib import Path

import numpy as np

from pipeline.checkpoint import WorkDir
from pipeline.config import Variant, load_params
from pipeline.dataset import PreparedData, load_prepared, model_outputs
from pipeline.model_files import load_trained
from pipeline.train import fit_variant

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--champion", default="relu_layers", help="the variant every combination includes")
    parser.add_argument("--seeds", type=int, default=1, help="also average the champion over this many seeds")
    arguments = parser.parse_args()
    config = load_params(ROOT / "params.yaml")
    names = list(config.models)
    data = load_prepared(ROOT)
    outputs = {}
    for name in names:
        model = load_trained(ROOT / "models" / name).model
        outputs[name] = (model_outputs(model, data.x_val, 512), model_outputs(model, data.x_test, 512))
    print("| members | val accuracy | test accuracy |\n|---|---|---|")
    for size in range(1, len(names) + 1):
        for members in itertools.combinations(names, size):
            if size > 1 and arguments.champion not in members:
                continue
            val = sum(outputs[member][0] for member in members).argmax(axis=1)
            test = sum(outputs[member][1] for member in members).argmax(axis=1)
            print(f"| {' + '.join(members)} | {(val == data.y_val).mean():.4f} | {(test == data.y_test).mean():.4f} |")
    if arguments.seeds > 1:
        seeds_table(config.variant(arguments.champion), data, outputs[arguments.champion], arguments.seeds)


def seeds_table(variant: Variant, data: PreparedData, first: tuple[np.ndarray, np.ndarray], seeds: int) -> None:
    """The champion averaged over its first k seeds, k = 1..seeds (the first: the trained model)."""
    val, test = first
    print(f"\n| {variant.name} seeds averaged | fit seconds of the last | val accuracy | test accuracy |\n"
          "|---|---|---|---|")
    print(f"| 1 (seed {variant.seed}, models/) | | {(val.argmax(1) == data.y_val).mean():.4f} | "
          f"{(test.argmax(1) == data.y_test).mean():.4f} |", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-ensembles-") as scratch:
        for offset in range(1, seeds):
            seed = variant.seed + offset
            trained = fit_variant(variant.with_seed(seed), data, WorkDir(Path(scratch) / str(seed), "ensembles"),
                                  verbose=0)
            val = val + model_outputs(trained.model, data.x_val, 512)
            test = test + model_outputs(trained.model, data.x_test, 512)
            print(f"| {offset + 1} (+ seed {seed}) | {trained.run['train_seconds']:.1f} | "
                  f"{(val.argmax(1) == data.y_val).mean():.4f} | {(test.argmax(1) == data.y_test).mean():.4f} |",
                  flush=True)


if __name__ == "__main__":
    main()
