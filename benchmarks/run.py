"""`make bench`: every benchmark, then benchmarks/results.md (the part above its hand-written notes).

    python -m benchmarks.run             # throughput (2 rounds x 5 variants) and 3 forced repros (~25 min)
    python -m benchmarks.run --quick     # 1 round, 1 repro on 1,000 images (~6 min)
    python -m benchmarks.run --only repro
    python -m benchmarks.run --only tune    # trial overhead (2 rounds x 4 trials) and 2 Dask workers (~12 min)
    python -m benchmarks.run --only serving # `mlflow models serve`: single-image latency, batch throughput (~3 min)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks import repro, scale, serving, throughput, tune
from benchmarks.common import machine
from benchmarks.seed_scripts import ARCHITECTURES

RESULTS = Path(__file__).with_name("results.md")
NOTES_MARKER = "<!-- notes: written by hand, kept by benchmarks/run.py -->"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="throughput,repro,tune,serving")
    arguments = parser.parse_args()
    chosen = arguments.only.split(",")
    about = machine()
    sections = ["# Benchmark results", "", "Written by `make bench` (`python -m benchmarks.run`); what each measures: "
                "benchmarks/README.md.", "", "| " + " | ".join(about) + " |", "|" + "---|" * len(about),
                "| " + " | ".join(str(value) for value in about.values()) + " |", ""]
    if "throughput" in chosen:
        result = throughput.measure(list(ARCHITECTURES), epochs=3, rounds=1 if arguments.quick else 2)
        sections += ["## Training throughput: `fit_variant` vs the seed notebooks' bare `model.fit`", "",
                     throughput.markdown(result), ""]
    if "repro" in chosen:
        result = repro.measure(runs=1 if arguments.quick else 3, max_images=1000 if arguments.quick else None)
        sections += ["## The default `dvc repro`", "", repro.markdown(result), ""]
    if "tune" in chosen:
        overhead = tune.measure_overhead("three_conv", trials=4, rounds=1 if arguments.quick else 2)
        parallel = None if arguments.quick else tune.measure_parallel("three_conv", trials=4)
        sections += ["## Tuning: trial overhead, and two Dask workers", "", tune.markdown(overhead, parallel), ""]
    if "serving" in chosen:
        result = serving.measure("relu_layers", singles=200, batches=4 if arguments.quick else 8)
        sections += ["## Serving: `mlflow models serve` of the champion", "", serving.markdown(result), ""]
    previous = RESULTS.read_text() if RESULTS.is_file() else ""
    notes = previous.split(NOTES_MARKER, 1)[1] if NOTES_MARKER in previous else "\n"
    before_notes = previous.split(NOTES_MARKER, 1)[0]
    for title in (scale.SECTION, scale.LIMITED_SECTION):  # `make bench-scale(-limited)` writes these: kept
        parts = scale.split_section(before_notes, title)
        if parts:
            sections += [parts[1].rstrip("\n"), ""]
    text = "\n".join(sections) + "\n" + NOTES_MARKER + notes
    RESULTS.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
