"""The accuracy-for-time sweep behind the default params (README, "Choosing the defaults").

Fits variants with training overrides one after another in one process, on a project whose
`data/prepared` exists (`dvc repro prepare`), and prints one JSON line per fit: the overrides, the
fit seconds (`fit_variant`'s own clock, first epoch included), validation and test accuracy.

    python -m benchmarks.sweep benchmarks/sweep_grid.json [--root .] [--out sweep.jsonl]

The grid file is a list of [variant, {train override: value}] pairs, e.g.
[["three_conv", {"epochs": 8, "batch_size": 128, "augment": {"rotation": 0.03, "translation": 0.08}}]].
Fit times are those of a warm process (the first fit pays TensorFlow's one-time set-up) and vary by
10-30 % between runs on a shared 2-core machine; compare settings in the same run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", type=Path, help="JSON list of [variant, {override: value}]")
    parser.add_argument("--root", type=Path, default=Path("."), help="project with params.yaml and data/prepared")
    parser.add_argument("--out", type=Path, help="append the JSON lines to this file too")
    arguments = parser.parse_args(argv)

    from pipeline.config import load_params
    from pipeline.prepare import load_prepared
    from pipeline.train import fit_variant

    grid = json.loads(arguments.grid.read_text())
    data = load_prepared(arguments.root / "data" / "prepared")
    for number, (variant, overrides) in enumerate(grid, start=1):
        config = load_params(arguments.root / "params.yaml",
                             overrides={f"models.{variant}.train.{key}": value for key, value in overrides.items()})
        with tempfile.TemporaryDirectory() as work:
            result = fit_variant(config, variant, data, Path(work), verbose=0)
        predicted = {split: result.model.predict(images, batch_size=512, verbose=0).argmax(axis=1)
                     for split, images in (("val", data.x_val), ("test", data.x_test))}
        row = {"variant": variant, **overrides, "fit_seconds": result.info["train_seconds"],
               "epochs_run": result.info["epochs_run"],
               "val_accuracy": float((predicted["val"] == data.y_val).mean()),
               "test_accuracy": float((predicted["test"] == data.y_test).mean())}
        print(f"[{number}/{len(grid)}] {json.dumps(row)}", flush=True)
        if arguments.out:
            with arguments.out.open("a") as out:
                out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
