"""`make bench`: every speed measurement of issue 8, as tables and benchmarks/results.{json,md}.

    python -m benchmarks.run                 # everything (about 20-25 minutes on 2 quiet cores)
    python -m benchmarks.run --quick         # a shorter version (about 8 minutes; goals not judged on it)
    python -m benchmarks.run --only flow,tracking   # some benchmarks; their sections replace the old ones

Benchmarks: throughput (1), repro (2 and 3: the full default run, stage breakdowns, the no-op run),
flow (4), tracking (5). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks import flow, report, repro, throughput, tracking
from benchmarks.common import (
    REPO,
    SOURCE,
    bench_env,
    code_version,
    load_average,
    machine,
    new_project,
    params_with,
    run,
)

ALL = ("throughput", "repro", "flow", "tracking")
RESULTS_JSON = REPO / "benchmarks" / "results.json"
RESULTS_MD = REPO / "benchmarks" / "results.md"
VARIANTS = ["swish_nopool", "relu_layers", "same_dropout_dense1000", "three_conv", "fashion_dropout"]

# How much of each benchmark runs. Full mode stays near 20 minutes on the 2-core machine when it is quiet.
PLANS: dict[str, dict[str, Any]] = {
    "full": {
        "throughput": {"rounds": 2, "epochs": 3, "batch_size": 64,
                       "candidates": {"three_conv": ["jit_param", "no_cache_prefetch", "prefetch_8", "no_determinism",
                                                     "steps_per_execution_19", "jit_no_determinism"],
                                      "same_dropout_dense1000": ["jit_param", "no_determinism",
                                                                 "steps_per_execution_19", "no_backup"]},
                       "thread_candidates": ["threads_2_1"], "thread_variant": "three_conv", "thread_rounds": 2},
        "repro": {"overrides": {}, "noop_repeats": 5, "probe_variant": "three_conv", "one_process": True,
                  "full_runs": 3},
        # The flow on the run it is scheduled for: the default params.
        "flow": {"rounds": 2, "images": None, "variants": None, "epochs": None},
        "tracking": {"rounds": 2, "variant": "three_conv"},
    },
    "quick": {
        "throughput": {"rounds": 1, "epochs": 3, "batch_size": 64,
                       "candidates": {"three_conv": ["jit_param", "no_determinism", "steps_per_execution_19",
                                                     "jit_no_determinism"]},
                       "thread_candidates": [], "thread_variant": "three_conv", "thread_rounds": 0},
        "repro": {"overrides": {"data.max_images": 1000, "train.epochs": 2}, "noop_repeats": 3,
                  "probe_variant": "three_conv", "one_process": False},
        "flow": {"rounds": 1, "images": 1000, "variants": ["three_conv", "relu_layers"], "epochs": 2},
        "tracking": {"rounds": 1, "variant": "three_conv"},
    },
}


def log(message: str) -> None:
    print(message, flush=True)


def prepared_project(work: Path) -> Path:
    """A project copy with the real params.yaml, ingested and prepared (3,600 training images)."""
    project = new_project(work / "prepared" / "project", params_with({}))
    env = bench_env(home=work)
    for stage in ("ingest", "prepare"):
        run([sys.executable, "-m", "pipeline", stage], cwd=project, env=env, log=work / "prepared.log")
    return project


def snapshot(work: Path) -> Path:
    """Copy the code once; every later project copy is made from this snapshot."""
    from tests.conftest import copy_project_files

    root = work / "snapshot"
    copy_project_files(root)
    return root


def save(results: dict[str, Any], description: dict[str, Any], meta: dict[str, Any], chosen: list[str]) -> str:
    """Merge this run's sections into benchmarks/results.json (older sections of benchmarks not run are
    kept when only some ran) and rewrite results.md. Called after every benchmark."""
    previous = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.is_file() else {}
    merged = previous.get("benchmarks", {}) if set(chosen) != set(ALL) else {}
    merged.update(results)
    document = {"machine": description, "meta": meta, "benchmarks": merged}
    RESULTS_JSON.write_text(json.dumps(document, indent=2, default=float) + "\n")
    text = report.markdown(document)
    RESULTS_MD.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds, small data for the dvc repro")
    parser.add_argument("--only", default=",".join(ALL), help=f"comma-separated subset of {', '.join(ALL)}")
    parser.add_argument("--work-dir", type=Path, help="where project copies and logs go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, copies, profiles)")
    arguments = parser.parse_args(argv)
    chosen = [name.strip() for name in arguments.only.split(",") if name.strip()]
    unknown = set(chosen) - set(ALL)
    if unknown:
        parser.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {', '.join(ALL)}")
    mode = "quick" if arguments.quick else "full"
    plan = PLANS[mode]
    work = arguments.work_dir or Path(tempfile.mkdtemp(prefix="cnn-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    started_at, started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), time.perf_counter()
    description = machine()
    meta = {"mode": mode, "started": started_at, "load_at_start": description["load_average"],
            "benchmarks_run": chosen, "code": code_version(REPO)}
    log(f"benchmarks ({mode}): {', '.join(chosen)}; work dir {work}; load {description['load_average']}; code "
        f"{meta['code']['commit']}" + (f" + uncommitted {meta['code']['uncommitted']}" if meta["code"]["uncommitted"]
                                       else ""))
    SOURCE["root"] = snapshot(work)
    results: dict[str, Any] = {}
    failed: list[str] = []
    project = None

    def section(name: str, measure: Any) -> None:
        try:
            results[name] = measure()
        except Exception:
            log(traceback.format_exc())
            failed.append(name)
            results[name] = {"error": traceback.format_exc()[-4000:]}
        meta.update(total_seconds=time.perf_counter() - started, load_at_end=load_average())
        results[name]["meta"] = dict(meta)
        save(results, description, meta, chosen)

    try:
        if {"throughput", "tracking"} & set(chosen):
            log("preparing data in a project copy (ingest, prepare) ...")
            project = prepared_project(work)
        if "throughput" in chosen:
            log("1. throughput: pipeline fit_variant vs bare model.fit, then candidates")
            settings = plan["throughput"]
            section("throughput", lambda: throughput.measure(
                project, work, VARIANTS, settings["rounds"], settings["candidates"], settings["thread_candidates"],
                settings["thread_variant"], settings["thread_rounds"], settings["epochs"], settings["batch_size"],
                log=log))
        if "repro" in chosen:
            log("2./3. dvc repro: full default run, no-op runs, stage probes")
            settings = plan["repro"]

            def repro_section() -> dict[str, Any]:
                params = params_with(settings["overrides"])
                copy = new_project(work / "repro" / "project", params)
                more = [new_project(work / "repro" / f"run-{number}" / "project", params)
                        for number in range(2, settings.get("full_runs", 1) + 1)]
                second = None
                if settings["one_process"]:
                    second = new_project(work / "repro" / "one-process" / "project", params)
                result = repro.measure(copy, bench_env(home=work / "repro"), work / "repro",
                                       settings["noop_repeats"], settings["probe_variant"], second, log=log,
                                       more_projects=more)
                result["quick"] = bool(settings["overrides"])
                return result

            section("repro", repro_section)
        if "flow" in chosen:
            log("4. Prefect flow vs direct calls")
            settings = plan["flow"]
            section("flow", lambda: flow.measure(work, settings["rounds"], settings["images"], settings["variants"],
                                                 settings["epochs"], log=log))
        if "tracking" in chosen:
            log("5. tracking overhead")
            settings = plan["tracking"]
            section("tracking", lambda: tracking.measure(project, work, settings["variant"], settings["rounds"],
                                                         log=log))
    finally:
        if not arguments.keep and arguments.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    meta.update(total_seconds=time.perf_counter() - started, load_at_end=load_average())
    text = save(results, description, meta, chosen)
    log("\n" + text)
    log(f"written {RESULTS_JSON.relative_to(REPO)} and {RESULTS_MD.relative_to(REPO)}"
        + (f"; logs in {work}" if arguments.keep or arguments.work_dir else "")
        + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
