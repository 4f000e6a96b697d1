"""Training throughput: the pipeline's `fit_variant` against the seed notebooks' bare `model.fit`.

    python -m benchmarks.throughput [--variants a,b] [--epochs 3] [--rounds 2]

Each fit runs in a process of its own, the two arms alternating (pipeline, bare, then bare, pipeline)
so that a change of load hits both, on the bundled sample's training split (3,600 images) at each
variant's batch size, without augmentation (the bare scripts have none). Images/s of a fit =
training images x epochs / fit seconds (first epoch included, for both arms); the ratio
pipeline / bare is taken against the neighbouring bare fit and the median over rounds reported.
Goal (issue 8): >= 0.95 for every variant.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, bench_env, load_average, median, spread
from benchmarks.seed_scripts import ARCHITECTURES, fit_seed_script


def bench_settings(variant: Any, epochs: int) -> Any:
    """The variant's train block for a throughput fit: `epochs` epochs, no augmentation, no early stop."""
    from pipeline.config import AugmentConfig

    return variant.train.model_copy(update={"epochs": epochs, "augment": AugmentConfig(),
                                            "early_stopping_patience": epochs})


def pipeline_fit_seconds(variant: Any, data: Any, epochs: int) -> float:
    """The fit seconds of the train stage's `fit_variant` with `bench_settings`, in a scratch work dir."""
    from pipeline.checkpoint import WorkDir
    from pipeline.train import fit_variant

    with tempfile.TemporaryDirectory() as scratch:
        trained = fit_variant(variant.model_copy(update={"train": bench_settings(variant, epochs)}), data,
                              WorkDir(Path(scratch), "bench"), verbose=0)
    return trained.run["train_seconds"]


def fit_once(arm: str, name: str, epochs: int) -> dict[str, Any]:
    """One fit in this process: the pipeline's (`fit_variant`, op determinism on) or the bare one."""
    from pipeline.config import load_params
    from pipeline.dataset import normalise
    from pipeline.prepare import prepare
    from pipeline.sources import read_bundled

    config = load_params(REPO / "params.yaml")
    data, _ = prepare(read_bundled(), config.prepare, config.seed)
    variant = config.variant(name)
    settings = bench_settings(variant, epochs)
    if arm == "pipeline":
        seconds = pipeline_fit_seconds(variant, data, epochs)
    else:
        # The notebooks' way: the whole split normalised to float32 in memory before the clock starts (the
        # pipeline's stream normalises each batch inside its timed fit).
        x_train, x_val = normalise(data.x_train), normalise(data.x_val)
        started = time.perf_counter()
        fit_seed_script(name, x_train, data.y_train, x_val, data.y_val, data.num_classes,
                        settings.batch_size, epochs)
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "images": len(data.y_train) * epochs, "batch_size": settings.batch_size}


def measure(variants: list[str], epochs: int, rounds: int) -> dict[str, Any]:
    """Each fit in a process of its own (op determinism is process-wide and cannot be switched off),
    the arms alternating: pipeline, bare; then bare, pipeline; ..."""
    rows = []
    for name in variants:
        fits: dict[str, list[dict[str, Any]]] = {"pipeline": [], "bare": []}
        load_before = load_average()
        for round_index in range(rounds):
            for arm in (["pipeline", "bare"] if round_index % 2 == 0 else ["bare", "pipeline"]):
                worker = subprocess.run([sys.executable, "-m", "benchmarks.throughput", "--worker", arm,
                                         "--variants", name, "--epochs", str(epochs)], cwd=REPO, env=bench_env(),
                                        capture_output=True, text=True, check=True, timeout=1800)
                fits[arm].append(json.loads(worker.stdout.strip().splitlines()[-1]))
        ratios = [bare["seconds"] / pipeline["seconds"] for bare, pipeline in zip(fits["bare"], fits["pipeline"],
                                                                                   strict=True)]
        images, batch = fits["pipeline"][0]["images"], fits["pipeline"][0]["batch_size"]
        rows.append({"variant": name, "batch_size": batch, "epochs": epochs,
                     "pipeline_images_per_second": round(images / median(f["seconds"] for f in fits["pipeline"]), 1),
                     "bare_images_per_second": round(images / median(f["seconds"] for f in fits["bare"]), 1),
                     "ratio": round(median(ratios), 3), "ratio_range": spread(ratios),
                     "load_1min": f"{load_before}-{load_average()}"})
        print(json.dumps(rows[-1]), flush=True)
    return {"rows": rows}


def markdown(result: dict[str, Any]) -> str:
    lines = ["| variant | batch | epochs | bare img/s | pipeline img/s | ratio (goal >= 0.95) | range | load |",
             "|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        verdict = "met" if row["ratio"] >= 0.95 else "**missed**"
        lines.append(f"| {row['variant']} | {row['batch_size']} | {row['epochs']} | "
                     f"{row['bare_images_per_second']:,.0f} | {row['pipeline_images_per_second']:,.0f} | "
                     f"{row['ratio']:.3f} ({verdict}) | {row['ratio_range']} | {row['load_1min']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(ARCHITECTURES))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    parser.add_argument("--worker", choices=["pipeline", "bare"], help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.worker:
        print(json.dumps(fit_once(arguments.worker, arguments.variants, arguments.epochs)))
        return
    result = measure(arguments.variants.split(","), arguments.epochs, arguments.rounds)
    if arguments.out:
        arguments.out.write_text(json.dumps(result, indent=2))
    print(markdown(result))


if __name__ == "__main__":
    main()
