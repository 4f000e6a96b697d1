"""Benchmarks 2 and 3: the default `dvc repro` by stage, where one train/evaluate/register stage
spends its time, and the no-op `dvc repro`.

The full run happens in a fresh project copy (tests.conftest.make_project) holding the real
params.yaml. Stage boundaries come from DVC's own "Running stage '...'" lines, timestamped as they
arrive; a stage's time runs until the next stage starts, so it includes DVC hashing and caching its
outputs. The stage breakdowns rerun single stages afterwards, each in a new process under
`python -X importtime -m benchmarks.stage_probe` (see stage_probe.py).
"""

from __future__ import annotations

import cProfile  # noqa: F401 - `python -m cProfile` is what profiles the no-op run
import json
import pstats
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import Clock, children_cpu_seconds, load_average, median, run, run_python_worker, spread

STAGE_LINE = re.compile(r"Running stage '([^']+)'")
# Packages whose import cost the brief asks for, plus the other heavy ones the stages load.
IMPORT_PACKAGES = ["tensorflow", "keras", "mlflow", "mlflow.tensorflow", "matplotlib", "matplotlib.pyplot",
                   "sklearn", "scipy", "pandas", "dvc", "dvc_data", "statsmodels", "typer", "pydantic", "numpy"]


def timed_repro(project: Path, env: dict[str, str], log_file: Path, arguments: list[str] | None = None
                ) -> dict[str, Any]:
    """Run `dvc repro`, timestamping its output lines; return the total and the per-stage times."""
    command = ["dvc", "repro", *(arguments or [])]
    load = load_average()["1min"]
    started, started_cpu = time.perf_counter(), children_cpu_seconds()
    process = subprocess.Popen(command, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, bufsize=1)
    events: list[tuple[float, str]] = []
    assert process.stdout is not None
    for line in process.stdout:
        events.append((time.perf_counter() - started, line.rstrip("\n")))
    code = process.wait()
    total = time.perf_counter() - started
    cpu = children_cpu_seconds() - started_cpu
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("a") as handle:
        handle.write(f"$ {' '.join(command)} (exit {code}, {total:.1f}s)\n")
        handle.writelines(f"[{seconds:8.2f}] {line}\n" for seconds, line in events)
    if code != 0:
        raise RuntimeError(f"dvc repro failed ({code}) in {project}; see {log_file}")
    starts = [(seconds, match.group(1)) for seconds, line in events if (match := STAGE_LINE.search(line))]
    stages = []
    for index, (seconds, name) in enumerate(starts):
        end = starts[index + 1][0] if index + 1 < len(starts) else total
        stages.append({"stage": name, "seconds": end - seconds})
    return {"total_seconds": total, "cpu_seconds": cpu, "load_1min_at_start": load,
            "load_1min_at_end": load_average()["1min"],
            "dvc_before_first_stage_seconds": starts[0][0] if starts else total, "stages": stages,
            "stages_run": len(starts)}


def parse_importtime(stderr: str) -> dict[str, Any]:
    """`-X importtime` lines -> total import time and each listed package's cumulative time at its first
    import (nested: a package first imported by another counts inside that one too)."""
    entries = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        _, self_us, cumulative_us, name = (part for part in re.split(r"\|", line.replace("import time:", "|", 1)))
        depth = (len(name) - len(name.lstrip(" ")) - 1) // 2  # one space, then two per level
        entries.append((depth, name.strip(), int(self_us), int(cumulative_us)))
    total = sum(cumulative for level, _, _, cumulative in entries if level == 0) / 1e6
    packages: dict[str, Any] = {}
    for index, (_, name, _, cumulative) in enumerate(entries):
        if name in IMPORT_PACKAGES and name not in packages:
            # The enclosing top-level import is the next depth-0 entry (importtime prints children first).
            parent = next((other for level, other, _, _ in entries[index:] if level == 0), name)
            packages[name] = {"seconds": cumulative / 1e6, "first_imported_under": parent}
    return {"total_seconds": total, "packages": packages}


def probe_stage(project: Path, env: dict[str, str], work: Path, stage: str, arguments: list[Any]) -> dict[str, Any]:
    """Rerun one stage in a new process with phase timers and -X importtime; add process start/exit time."""
    work.mkdir(parents=True, exist_ok=True)
    spec_file, result_file = work / f"probe-{stage}.spec.json", work / f"probe-{stage}.result.json"
    spec_file.write_text(json.dumps({"stage": stage, "arguments": arguments}))
    load = load_average()["1min"]
    with Clock() as clock:
        completed = subprocess.run([sys.executable, "-X", "importtime", "-m", "benchmarks.stage_probe",
                                    str(spec_file), str(result_file)], cwd=project, env=env, capture_output=True,
                                   text=True, timeout=1800, check=False)
    (work / f"probe-{stage}.log").write_text(completed.stdout + "\n" + completed.stderr)
    if completed.returncode != 0:
        raise RuntimeError(f"stage probe {stage} failed:\n{completed.stderr[-3000:]}")
    result = json.loads(result_file.read_text())
    result["process_seconds"] = clock.seconds
    result["process_cpu_seconds"] = clock.child_cpu_seconds
    result["interpreter_start_and_exit_seconds"] = clock.seconds - result["in_process_seconds"]
    result["importtime"] = parse_importtime(completed.stderr)
    result["load_1min_at_start"] = load
    return result


def no_op(project: Path, env: dict[str, str], work: Path, repeats: int) -> dict[str, Any]:
    """`dvc repro` with nothing changed, `repeats` times; then one run under cProfile for the breakdown."""
    seconds, cpu, loads = [], [], []
    for _ in range(repeats):
        loads.append(load_average()["1min"])
        with Clock() as clock:
            result = run(["dvc", "repro"], cwd=project, env=env, log=work / "noop.log")
        if "Running stage" in result.stdout:
            raise RuntimeError(f"the no-op dvc repro reran stages:\n{result.stdout[-2000:]}")
        seconds.append(clock.seconds)
        cpu.append(clock.child_cpu_seconds)
    profile_file = work / "noop.prof"
    with Clock() as profiled:
        imports = subprocess.run([sys.executable, "-X", "importtime", "-m", "cProfile", "-o", str(profile_file),
                                  "-m", "dvc", "repro"], cwd=project, env=env, capture_output=True, text=True,
                                 timeout=600, check=True)
    with Clock() as python_only:
        run([sys.executable, "-c", "pass"], cwd=project, env=env)
    with Clock() as dvc_import:
        run([sys.executable, "-c", "import dvc.cli, dvc.repo"], cwd=project, env=env)
    return {"runs_seconds": seconds, "median_seconds": median(seconds), "median_cpu_seconds": median(cpu),
            "goal_seconds": 3.0,
            "meets_goal": median(seconds) <= 3.0, "load_1min_during": spread(loads),
            "interpreter_start_seconds": python_only.seconds, "import_dvc_process_seconds": dvc_import.seconds,
            "profiled_run_seconds": profiled.seconds,
            "imports_in_profiled_run": parse_importtime(imports.stderr)["total_seconds"],
            "top_functions": top_functions(profile_file)}


def top_functions(profile_file: Path, count: int = 15) -> list[dict[str, Any]]:
    """The functions with the largest cumulative time (skipping the import machinery and wrappers)."""
    stats = pstats.Stats(str(profile_file))
    rows = []
    for (file_name, line, function), (_, calls, _, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        where = file_name.split("site-packages/")[-1]
        if where.startswith(("<frozen", "~")) or function in ("<module>", "_call_with_frames_removed"):
            continue
        rows.append({"function": f"{where}:{line}({function})", "cumulative_seconds": round(cumulative, 3),
                     "calls": calls})
    rows.sort(key=lambda row: row["cumulative_seconds"], reverse=True)
    return rows[:count]


def training_facts(project: Path) -> dict[str, dict[str, Any]]:
    facts = {}
    for path in sorted((project / "models").glob("*/training.json")):
        info = json.loads(path.read_text())
        facts[info["variant"]] = {"train_seconds": info["train_seconds"], "epochs_run": info["epochs_run"],
                                  "images_per_second": info["images_per_second"]}
    return facts


EXIT_SCRIPT = """
import os, sys, time
started = time.perf_counter()
import tensorflow
sys.stdout.write(repr(time.perf_counter() - started))
sys.stdout.flush()
if sys.argv[1] == "hard":
    os._exit(0)
"""


def exit_cost(env: dict[str, str], rounds: int) -> dict[str, Any]:
    """What ending a process that imported TensorFlow costs: a normal interpreter exit vs os._exit(0)
    (which skips module teardown), alternating. Process wall time minus the time to the import's end."""
    tails: dict[str, list[float]] = {"normal": [], "hard": []}
    for round_index in range(rounds):
        for mode in (("normal", "hard") if round_index % 2 == 0 else ("hard", "normal")):
            with Clock() as clock:
                completed = subprocess.run([sys.executable, "-c", EXIT_SCRIPT, mode], env=env, capture_output=True,
                                           text=True, timeout=300, check=True)
            tails[mode].append(clock.seconds - float(completed.stdout.strip()))
    return {"normal_exit_seconds": median(tails["normal"]), "hard_exit_seconds": median(tails["hard"]),
            "runs": tails, "load_1min": load_average()["1min"]}


def one_process(project: Path, env: dict[str, str], work: Path) -> dict[str, Any]:
    """The same stages on a second fresh copy, called in one Python process (benchmarks.flow's direct
    arm: run_ingest ... register_best, then dvc commit): what per-stage processes cost, measured."""
    load = load_average()["1min"]
    with Clock() as clock:
        result = run_python_worker("benchmarks.flow", {"arm": "direct", "project": str(project)}, work,
                                   "one-process", env, cwd=project)
    return {"process_seconds": clock.seconds, "cpu_seconds": clock.child_cpu_seconds,
            "imports_seconds": result["common_imports_seconds"],
            "call_seconds": result["call_seconds"], "stage_function_seconds": result["stage_function_seconds"],
            "load_1min_at_start": load, "load_1min_at_end": load_average()["1min"]}


def measure(project: Path, env: dict[str, str], work: Path, noop_repeats: int, probe_variant: str | None,
            second_project: Path | None = None, log: Any = print,
            more_projects: list[Path] | None = None) -> dict[str, Any]:
    """The full run (and, given `more_projects`, the same full run on each of those fresh copies: the
    goal is judged on the median), then the no-op runs (before anything changes), then the stage
    probes, then (given a second fresh copy) the same stages in one process."""
    log(f"  dvc repro (full) in {project} (load {load_average()['1min']:.2f}) ...")
    full = timed_repro(project, env, work / "repro.log")
    full["training"] = training_facts(project)
    log(f"  full dvc repro: {full['total_seconds']:.1f}s, {full['stages_run']} stages")
    totals = [full["total_seconds"]]
    for number, extra in enumerate(more_projects or [], start=2):
        log(f"  full dvc repro #{number} in {extra} (load {load_average()['1min']:.2f}) ...")
        again = timed_repro(extra, env, work / f"repro-{number}.log")
        totals.append(again["total_seconds"])
        log(f"  full dvc repro #{number}: {again['total_seconds']:.1f}s")
    log(f"  no-op dvc repro x{noop_repeats} ...")
    noop = no_op(project, env, work, noop_repeats)
    log(f"  no-op dvc repro: median {noop['median_seconds']:.2f}s")
    probes = {}
    if probe_variant:
        for stage, arguments in (("train", [probe_variant]), ("evaluate", [[probe_variant]]), ("register", [])):
            log(f"  probing the {stage} stage (load {load_average()['1min']:.2f}) ...")
            probes[stage] = probe_stage(project, env, work, stage, arguments)
            log(f"  {stage}: {probes[stage]['process_seconds']:.1f}s in its process, "
                f"imports {probes[stage]['imports_seconds']:.1f}s")
    log("  cost of a normal exit after importing TensorFlow vs os._exit ...")
    exits = exit_cost(env, 2)
    single = None
    if second_project is not None:
        log(f"  the same stages in one process, second fresh copy (load {load_average()['1min']:.2f}) ...")
        single = one_process(second_project, env, work)
        log(f"  one process: {single['process_seconds']:.1f}s")
    return {"full": full, "noop": noop, "probes": probes, "one_process": single, "exit_cost": exits,
            "goal_seconds": 150.0, "full_totals": totals, "median_total_seconds": median(totals),
            "meets_goal": median(totals) <= 150.0}
