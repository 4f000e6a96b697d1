"""The default `dvc repro` (wall time, by stage, and the time outside the fits) and the no-op `dvc repro`.

    python -m benchmarks.repro [--runs 3] [--max-images N]

Each run is a forced `dvc repro` in a fresh project copy (tests.conftest.make_project: a git + DVC
repository of the current code) with the shipped params.yaml. Stage boundaries are DVC's own
"Running stage '...'" lines, timestamped as they arrive (a stage runs until the next one starts, so
DVC's hashing and caching of its outputs count to it). The fit seconds come from the train stage's
run records (reports/runs/<variant>.json); "outside the fits" = wall - the fits' seconds: process
start-up, imports, tracking, evaluation pictures and registration. Then `dvc repro` with nothing
changed, five times. Goals: forced run <= 150 s, outside the fits <= 50 s, no-op <= 3 s.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import bench_env, default_params, load_average, median, new_project, spread

STAGE_LINE = re.compile(r"Running stage '([^']+)'")


def timed_repro(project: Path, arguments: list[str]) -> dict[str, Any]:
    """Run `dvc repro`, timestamping its output lines; return the wall time and each stage's."""
    load = load_average()
    started = time.perf_counter()
    process = subprocess.Popen(["dvc", "repro", *arguments], cwd=project, env=bench_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, bufsize=1)
    assert process.stdout is not None
    events = [(time.perf_counter() - started, line) for line in process.stdout]
    total = time.perf_counter() - started
    if process.wait() != 0:
        raise RuntimeError(f"dvc repro failed in {project}:\n{''.join(line for _, line in events[-40:])}")
    starts = [(seconds, match.group(1)) for seconds, line in events if (match := STAGE_LINE.search(line))]
    stages = {name: round((starts[index + 1][0] if index + 1 < len(starts) else total) - seconds, 2)
              for index, (seconds, name) in enumerate(starts)}
    return {"seconds": round(total, 2), "stages": stages, "load_1min": f"{load}-{load_average()}"}


def fit_seconds(project: Path) -> dict[str, float]:
    """The fit seconds each train stage recorded in its run record."""
    from pipeline.layout import Layout

    layout = Layout(project)
    return {path.stem: json.loads(path.read_text())["train_seconds"]
            for path in sorted(layout.run_record("x").parent.glob("*.json"))}


def measure(runs: int, max_images: int | None) -> dict[str, Any]:
    params = default_params()
    if max_images:
        params["data"]["max_images"] = max_images
    forced = []
    with tempfile.TemporaryDirectory(prefix="bench-repro-") as scratch:
        for index in range(runs):
            project = new_project(Path(scratch) / f"run-{index}", params)
            run = timed_repro(project, ["--force"])
            run["fits"] = fit_seconds(project)
            run["outside_fits"] = round(run["seconds"] - sum(run["fits"].values()), 2)
            forced.append(run)
            print(json.dumps(run), flush=True)
        noop = [timed_repro(project, [])["seconds"] for _ in range(5)]
    return {"max_images": max_images, "forced": forced, "noop": noop}


def markdown(result: dict[str, Any]) -> str:
    forced = result["forced"]
    walls, outside = [run["seconds"] for run in forced], [run["outside_fits"] for run in forced]
    first = forced[0]
    subset = f" (data.max_images {result['max_images']})" if result["max_images"] else ""
    lines = [f"Forced `dvc repro` on a fresh copy{subset}, "
             f"{len(forced)} run(s): median **{median(walls):.1f} s** ({spread(walls)}; goal <= 150 s); outside the "
             f"fits median **{median(outside):.1f} s** ({spread(outside)}; goal <= 50 s). "
             f"No-op `dvc repro`: median **{median(result['noop']):.2f} s** of {len(result['noop'])} "
             f"({spread(result['noop'])}; goal <= 3 s).", "",
             f"The first run by stage (load {first['load_1min']}):", "",
             "| stage | seconds | of which the fit |", "|---|---|---|"]
    for stage, seconds in first["stages"].items():
        variant = stage.split("@", 1)[1] if stage.startswith("train@") else None
        fit = f"{first['fits'][variant]:.1f}" if variant in first["fits"] else ""
        lines.append(f"| {stage} | {seconds:.1f} | {fit} |")
    lines.append(f"| **total** | **{first['seconds']:.1f}** | **{sum(first['fits'].values()):.1f}** |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-images", type=int, default=None, help="a smaller data set (quick check)")
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    arguments = parser.parse_args()
    result = measure(arguments.runs, arguments.max_images)
    if arguments.out:
        arguments.out.write_text(json.dumps(result, indent=2))
    print(markdown(result))


if __name__ == "__main__":
    main()
