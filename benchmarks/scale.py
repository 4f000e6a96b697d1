"""The pipeline at scale: each stage's wall time and peak memory, the disk per image, and training
throughput, on data sets far larger than the bundled sample (issue 16).

    python -m benchmarks.scale [--sizes 60000,300000] [--colour 50000] [--quick] [--data-dir DIR]
    python -m benchmarks.scale --write-baseline     # record today's figures in benchmarks/scale_baseline.json
    python -m benchmarks.scale --sizes 2000000 --colour 0 --rounds 0 --memory-limit 1.5e9
                                                    # make bench-scale-limited: data larger than the limit

Data (benchmarks/scale_data.py): shifted and rotated copies of the bundled 5,000 digits, generated
offline, seeded, cached under --data-dir: 28x28x1 IDX files of each --sizes, and --colour 64x64x3 PNGs
in class folders. Each data set goes into a fresh project copy (tests.conftest.make_project) as
data/source/<name>, with the shipped params.yaml but one variant (three_conv, the smallest seed
network), one epoch and no data.max_images; then `dvc repro` of ingest, prepare, train@three_conv and
evaluate, each a process of its own. A stage that fails is recorded with its error line, and the
stages after it are skipped.

Peak memory of a stage: `os.wait4` on the `dvc repro` process returns the kernel's high-water mark of
resident memory (ru_maxrss) over that process and every descendant it reaped: the largest single process
of the tree, the `python -m pipeline <stage>` DVC starts (dvc itself, hashing and caching the outputs
beside it, stays near 0.1 GB). The tree is also sampled with psutil every 0.2 s: the stage's own process
(its command line holds "-m pipeline") and the sum over the tree. The wait4 figure is the one the goal
is judged on: it is exact (the kernel updates it at every page fault; a 0.2 s sampler can miss a short
peak, and the last moments of a process) and it is what the stage costs the machine at its largest; the
sampled stage process shows which process set it (measured: within 1-50 MB of wait4 in most stages, and
170 MB short of it once, in the 300,000-image train stage: a peak between two samples). One caveat,
measured: a child's ru_maxrss starts at its parent's peak RSS (Linux keeps the high-water mark of the
memory it replaces at exec, and Python's subprocess forks with vfork), so this process never loads data
itself (it generates in a subprocess, fits in workers): its own peak, the floor of every figure, is
recorded with each stage (`floor_bytes`, about 0.05 GB).

Memory limit (`--memory-limit`, benchmarks/cgroup.py): each stage's dvc process, and all it starts, in a
cgroup v1 memory group of that many bytes, resident memory and page cache together: the group's peak
(which reaches the limit whenever the data is larger, the page cache filling the rest) and the
processes OOM-killed are recorded with the stage, in a section of results.md of its own.

Disk: bytes of data/raw, data/prepared and .dvc/cache after the last stage (file sizes; DVC copies
into its cache on this file system, so the workspace and the cache hold separate bytes), per image.

Throughput (the first --sizes only, on its project copy after prepare): images/s of the train stage's
path, `fit_variant` on `load_prepared(...)`, against a bare `model.fit` of the same `build_model`
network, compiled alike, on in-memory float32 arrays, same batch size, no augmentation in either, one
fit per process, the arms alternating (as benchmarks/throughput.py), 4 rounds: at 1 epoch one fit varies
by up to 30% under this machine's shared load (measured: 2 rounds gave 0.98 once, 1.09 (0.89-1.30) the
next time). Images/s = training images x epochs / fit seconds (first epoch included, for both).

Goals: train-stage peak RSS at the largest --sizes <= 1.5 GB (10^9 bytes); throughput ratio >= 0.95;
data/prepared and the DVC cache per image <= 0.3 of the float32 design's (scale_baseline.json).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks import scale_data
from benchmarks.cgroup import CgroupError, MemoryGroup
from benchmarks.common import REPO, bench_env, default_params, load_average, machine, median, new_project, spread
from benchmarks.throughput import bench_settings, pipeline_fit_seconds
from benchmarks.throughput import markdown as throughput_markdown

VARIANT = "three_conv"  # the smallest of the seed networks (93,322 parameters)
STAGES = ("ingest", "prepare", f"train@{VARIANT}", "evaluate")
BASELINE = Path(__file__).with_name("scale_baseline.json")
RESULTS = Path(__file__).with_name("results.md")
SECTION = "## Scale (make bench-scale)"
LIMITED_SECTION = "## Scale under a memory limit (make bench-scale-limited)"
PEAK_RSS_GOAL_BYTES = 1.5e9
THROUGHPUT_GOAL = 0.95
BYTES_GOAL = 0.3
SAMPLE_SECONDS = 0.2
STAGE_TIMEOUT_SECONDS = 3600


# --------------------------------------------------------------------------- stages


def _sample_tree(pid: int, stop: threading.Event, peaks: dict[str, int]) -> None:
    """Every SAMPLE_SECONDS: the resident memory of the stage's process (`-m pipeline`), and of `pid`'s tree."""
    import psutil

    try:
        root = psutil.Process(pid)
    except psutil.Error:
        return
    while not stop.wait(SAMPLE_SECONDS):
        tree = stage = 0
        try:
            processes = [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
        for process in processes:
            with contextlib.suppress(psutil.Error):  # it ended between the listing and the reading
                rss = process.memory_info().rss
                tree += rss
                if "pipeline" in process.cmdline()[1:4] and "-m" in process.cmdline()[1:3]:
                    stage = max(stage, rss)
        peaks["stage"] = max(peaks.get("stage", 0), stage)
        peaks["tree"] = max(peaks.get("tree", 0), tree)


def run_stage(project: Path, stage: str, log: Path, group: MemoryGroup | None = None) -> dict[str, Any]:
    """`dvc repro <stage>`: wall seconds, peak RSS (wait4 and sampled), exit status, its error line; inside
    `group` (a memory limit), also the group's peak (resident memory and page cache) and its OOM kills."""
    env = bench_env()
    env.pop("MLFLOW_TRACKING_URI", None)  # bench_env drops it already: the project's own SQLite store
    load = load_average()
    if group is not None:
        group.reset_peak()
        kills_before = group.usage()["oom_kills"]
    with log.open("w") as output:
        started = time.perf_counter()
        process = subprocess.Popen(["dvc", "repro", stage], cwd=project, env=env, stdout=output,
                                   stderr=subprocess.STDOUT, preexec_fn=group.join if group else None)
        peaks: dict[str, int] = {}
        stop = threading.Event()
        sampler = threading.Thread(target=_sample_tree, args=(process.pid, stop, peaks), daemon=True)
        sampler.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)  # blocks; a timeout is the harness' job (--quick first)
        finally:
            stop.set()
            sampler.join()
        seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    result = {"stage": stage, "seconds": round(seconds, 1), "ok": process.returncode == 0,
              "peak_rss_bytes": usage.ru_maxrss * 1024, "sampled_stage_bytes": peaks.get("stage", 0),
              "sampled_tree_bytes": peaks.get("tree", 0), "load_1min": f"{load}-{load_average()}",
              "floor_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if group is not None:
        usage = group.usage()
        result["group"] = {"limit_bytes": usage["limit_bytes"], "peak_bytes": usage["peak_bytes"],
                           "oom_kills": usage["oom_kills"] - kills_before, "swap_bytes": usage["swap_bytes"]}
    if not result["ok"]:
        result["error"] = error_line(log.read_text(errors="replace"))
    return result


def error_line(output: str) -> str:
    """The line of a failed stage's output that says what went wrong (the last ERROR / ...Error line)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    marked = [line for line in lines if "ERROR" in line or "Error" in line or "error:" in line or "Killed" in line]
    return (marked or lines or ["(no output)"])[-1][:300]


def tree_bytes(path: Path) -> int:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file() and not file.is_symlink()) \
        if path.exists() else 0


# --------------------------------------------------------------------------- one data set


def scale_params(data: dict[str, Any]) -> dict[str, Any]:
    """The shipped params.yaml with one variant, one epoch, the whole data set and `data` set."""
    params = default_params()
    params["data"] = {**params["data"], **data, "max_images": None}
    params["train"] = {**params["train"], "epochs": 1}
    params["models"] = {VARIANT: params["models"][VARIANT]}
    params["models"][VARIANT].get("train", {}).pop("epochs", None)
    return params


def measure_dataset(spec: dict[str, Any], data_dir: Path, scratch: Path, seed: int,
                    after_prepare: Any = None, group: MemoryGroup | None = None) -> dict[str, Any]:
    """Generate (or reuse) a data set, run the four stages on it in a fresh project copy, measure the disk.

    `after_prepare(project)` runs once prepare succeeded (the throughput measurement)."""
    source = data_dir / spec["name"]
    started = time.perf_counter()
    if not source.is_dir():
        subprocess.run([sys.executable, "-m", "benchmarks.scale_data", spec["kind"], str(source), str(spec["images"]),
                        str(seed)], cwd=REPO, env=bench_env(), check=True)
    if spec["kind"] == "idx":
        data = {"source": "idx", "image_height": 28, "image_width": 28, "channels": 1}
    else:
        data = {"source": "folder", "image_height": 64, "image_width": 64, "channels": 3}
    generate_seconds = round(time.perf_counter() - started, 1)
    data["path"] = f"data/source/{spec['name']}"
    project = new_project(scratch / spec["name"], scale_params(data))
    scale_data.link_tree(source, project / data["path"])
    result: dict[str, Any] = {**spec, "shape": [data["image_height"], data["image_width"], data["channels"]],
                              "generate_seconds": generate_seconds, "stages": [], "extra": None}
    for stage in STAGES:
        if result["stages"] and not result["stages"][-1]["ok"]:
            result["stages"].append({"stage": stage, "ok": False, "skipped": True})
            continue
        outcome = run_stage(project, stage, scratch / f"{spec['name']}-{stage}.log", group)
        result["stages"].append(outcome)
        print(json.dumps({"data": spec["name"], **outcome}), flush=True)
        if stage == "prepare" and outcome["ok"] and after_prepare is not None:
            result["extra"] = after_prepare(project)
    report = project / "reports" / "data" / "prepare.json"
    if report.is_file():
        result["duplicate_fraction"] = json.loads(report.read_text()).get("duplicate_fraction")
    result["disk"] = {name: tree_bytes(project / relative) for name, relative in
                      (("raw", "data/raw"), ("prepared", "data/prepared"), ("cache", ".dvc/cache"))}
    shutil.rmtree(project, ignore_errors=True)
    return result


# --------------------------------------------------------------------------- throughput


def load_splits(project: Path) -> Any:
    """The train and val splits as the train stage reads them (uint8 images gathered from data/raw)."""
    from pipeline.dataset import load_prepared

    return load_prepared(project, splits=("train", "val"))


def fit_once(arm: str, project: Path, epochs: int) -> dict[str, Any]:
    """One fit in this process: the train stage's `fit_variant`, or a bare `model.fit` on arrays."""
    import numpy as np

    from pipeline.config import AugmentConfig, load_params
    from pipeline.dataset import normalise
    from pipeline.models import build_model
    from pipeline.train import make_optimizer

    config = load_params(project / "params.yaml")
    variant = config.variant(VARIANT)
    settings = bench_settings(variant, epochs)
    data = load_splits(project)
    if arm == "pipeline":
        seconds = pipeline_fit_seconds(variant, data, epochs)
    else:
        x_train, x_val = normalise(data.x_train), normalise(data.x_val)
        y_train, y_val = np.asarray(data.y_train), np.asarray(data.y_val)
        model = build_model(variant.layers, data.input_shape, data.num_classes, name=variant.name,
                            augment=AugmentConfig(), seed=variant.seed)
        model.compile(optimizer=make_optimizer(settings, int(np.ceil(len(y_train) / settings.batch_size))),
                      loss=settings.loss, metrics=["accuracy"], jit_compile=settings.jit_compile)
        started = time.perf_counter()
        model.fit(x_train, y_train, batch_size=settings.batch_size, epochs=epochs, validation_data=(x_val, y_val),
                  verbose=2)
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "images": len(data.y_train) * epochs, "batch_size": settings.batch_size}


def measure_throughput(project: Path, epochs: int, rounds: int) -> dict[str, Any]:
    """Pipeline and bare fits, each in a process of its own, alternating: pipeline, bare; bare, pipeline; ..."""
    fits: dict[str, list[dict[str, Any]]] = {"pipeline": [], "bare": []}
    load_before = load_average()
    for round_index in range(rounds):
        for arm in (["pipeline", "bare"] if round_index % 2 == 0 else ["bare", "pipeline"]):
            worker = subprocess.run([sys.executable, "-m", "benchmarks.scale", "--worker", arm, "--project",
                                     str(project), "--epochs", str(epochs)], cwd=REPO, env=bench_env(),
                                    capture_output=True, text=True, timeout=STAGE_TIMEOUT_SECONDS)
            if worker.returncode != 0:
                return {"error": f"{arm} fit failed: {error_line(worker.stderr + worker.stdout)}"}
            fits[arm].append(json.loads(worker.stdout.strip().splitlines()[-1]))
            print(json.dumps({"throughput": arm, **fits[arm][-1]}), flush=True)
    ratios = [bare["seconds"] / pipeline["seconds"] for bare, pipeline in zip(fits["bare"], fits["pipeline"],
                                                                               strict=True)]
    images, batch = fits["pipeline"][0]["images"], fits["pipeline"][0]["batch_size"]
    return {"variant": VARIANT, "batch_size": batch, "epochs": epochs, "train_images": images // epochs,
            "pipeline_images_per_second": round(images / median(f["seconds"] for f in fits["pipeline"]), 1),
            "bare_images_per_second": round(images / median(f["seconds"] for f in fits["bare"]), 1),
            "ratio": round(median(ratios), 3), "ratio_range": spread(ratios),
            "load_1min": f"{load_before}-{load_average()}"}


# --------------------------------------------------------------------------- the float32 design, goals


def per_image(dataset: dict[str, Any]) -> dict[str, float]:
    return {name: round(size / dataset["images"], 1) for name, size in dataset["disk"].items()}


def design_reference(dataset: dict[str, Any], baseline: dict[str, Any]) -> tuple[dict[str, float], str]:
    """Bytes per image of the float32 design for this data set: its baseline entry, else the baseline
    entry of the same kind with the most images, else the arithmetic (float32 prepared, uint8 raw)."""
    entries = baseline.get("datasets", {})
    same = entries.get(dataset["name"]) or max(
        (entry for entry in entries.values() if entry["kind"] == dataset["kind"] and "disk" in entry),
        key=lambda entry: entry["images"], default=None)
    if same is not None:
        return per_image(same), f"{same['name']} at {baseline.get('commit', '?').split()[0]}"
    pixels = dataset["shape"][0] * dataset["shape"][1] * dataset["shape"][2]
    return {"raw": pixels, "prepared": 4 * pixels, "cache": 5 * pixels}, "arithmetic (no baseline entry)"


def stage(dataset: dict[str, Any], name: str) -> dict[str, Any]:
    return next(entry for entry in dataset["stages"] if entry["stage"] == name)


def goals(result: dict[str, Any], baseline: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """(goal, figure, met) for each goal; met None when there is nothing to judge."""
    rows: list[tuple[str, str, bool | None]] = []
    idx = [dataset for dataset in result["datasets"] if dataset["kind"] == "idx"]
    if idx:
        largest = max(idx, key=lambda dataset: dataset["images"])
        train = stage(largest, f"train@{VARIANT}")
        figure = (f"{train['peak_rss_bytes'] / 1e9:.2f} GB" if not train.get("skipped") else "not run") + \
            ("" if train["ok"] else f" (failed: {train.get('error', 'skipped')})")
        rows.append((f"train-stage peak RSS at {largest['images']:,} images <= 1.5 GB", figure,
                     train["ok"] and train["peak_rss_bytes"] <= PEAK_RSS_GOAL_BYTES))
    limit = result.get("memory_limit_bytes")
    if limit:
        for dataset in result["datasets"]:
            ran = [entry for entry in dataset["stages"] if not entry.get("skipped")]
            finished = all(entry["ok"] for entry in dataset["stages"])
            kills = sum(entry.get("group", {}).get("oom_kills", 0) for entry in ran)
            rows.append((f"{dataset['name']} ({dataset['disk']['raw'] / 1e9:.2f} GB of images): every stage "
                         f"finishes within {limit / 1e9:.2f} GB", f"{len(ran)} of {len(dataset['stages'])} stages ran"
                         f", {kills} OOM kills" + ("" if finished else f"; failed: {ran[-1].get('error', '')}"),
                         finished and kills == 0))
    throughput = result.get("throughput") or {}
    if "ratio" in throughput:
        rows.append((f"throughput ratio at {throughput['train_images']:,} training images >= 0.95",
                     f"{throughput['ratio']:.3f}", throughput["ratio"] >= THROUGHPUT_GOAL))
    elif throughput:
        rows.append(("throughput ratio >= 0.95", throughput.get("error", "not measured"), False))
    for dataset in result["datasets"]:
        reference, _ = design_reference(dataset, baseline)
        measured = per_image(dataset)
        for part in ("prepared", "cache"):
            ratio = measured[part] / reference[part] if reference[part] else float("nan")
            rows.append((f"{dataset['name']}: {part} bytes/image <= 0.3 of the float32 design's",
                         f"{measured[part]:,.0f} / {reference[part]:,.0f} = {ratio:.2f}", ratio <= BYTES_GOAL))
    return rows


# --------------------------------------------------------------------------- output


def megabytes(size: int) -> str:
    return f"{size / 1e6:,.0f}"


def markdown(result: dict[str, Any], baseline: dict[str, Any]) -> str:
    about = result["machine"]
    limit = result.get("memory_limit_bytes")
    lines = ["| " + " | ".join(about) + " |", "|" + "---|" * len(about),
             "| " + " | ".join(str(value) for value in about.values()) + " |", "",
             *([f"Every stage ran in a cgroup memory group limited to {limit / 1e9:.2f} GB (benchmarks/cgroup.py): "
                "resident memory and page cache together; 'group peak' is the group's high-water mark of both "
                "(memory.max_usage_in_bytes), 'OOM kills' the processes the kernel killed at the limit. The data "
                "sets: " + ", ".join(f"{dataset['name']} {dataset['disk']['raw'] / 1e9:.2f} GB as uint8 "
                                     f"({4 * dataset['disk']['raw'] / 1e9:.1f} GB as float32)"
                                     for dataset in result["datasets"]) + ".", ""] if limit else []),
             f"Variant {VARIANT}, 1 epoch, one `dvc repro <stage>` process per stage in a fresh project copy; "
             f"{result['mode']} mode; took {result['minutes']:.1f} min. Peak RSS: `os.wait4` of the dvc process "
             "(ru_maxrss: the largest process of its tree, the stage's python); sampled: psutil every "
             "0.2 s, the stage's `python -m pipeline` process / the sum over the tree. MB = 10^6 bytes.", "",
             "| data | images | HxWxC | stage | seconds | peak RSS MB (wait4) | sampled stage / tree MB | load "
             + ("| group peak MB | OOM kills " if limit else "") + "| status |",
             "|---|---|---|---|---|---|---|---|---|" + ("---|---|" if limit else "")]
    for dataset in result["datasets"]:
        shape = "x".join(str(value) for value in dataset["shape"])
        for entry in dataset["stages"]:
            if entry.get("skipped"):
                lines.append(f"| {dataset['name']} | {dataset['images']:,} | {shape} | {entry['stage']} | | | | | "
                             + ("| | " if limit else "") + "skipped |")
                continue
            status = "ok" if entry["ok"] else f"**failed**: `{entry['error']}`"
            lines.append(f"| {dataset['name']} | {dataset['images']:,} | {shape} | {entry['stage']} | "
                         f"{entry['seconds']:.1f} | {megabytes(entry['peak_rss_bytes'])} | "
                         f"{megabytes(entry['sampled_stage_bytes'])} / {megabytes(entry['sampled_tree_bytes'])} | "
                         f"{entry['load_1min']} | "
                         + (f"{megabytes(entry['group']['peak_bytes'])} | {entry['group']['oom_kills']} | "
                            if limit else "") + f"{status} |")
    lines += ["", "Disk after the last stage (bytes per image; the design reference: scale_baseline.json, the "
              "float32 design measured):", "",
              "| data | raw MB | prepared MB | cache MB | raw B/img | prepared B/img | cache B/img | "
              "float32 design prepared / cache B/img | reference | duplicates |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for dataset in result["datasets"]:
        measured, (reference, where) = per_image(dataset), design_reference(dataset, baseline)
        disk = dataset["disk"]
        lines.append(f"| {dataset['name']} | {megabytes(disk['raw'])} | {megabytes(disk['prepared'])} | "
                     f"{megabytes(disk['cache'])} | {measured['raw']:,.0f} | {measured['prepared']:,.0f} | "
                     f"{measured['cache']:,.0f} | {reference['prepared']:,.0f} / {reference['cache']:,.0f} | "
                     f"{where} | {dataset.get('duplicate_fraction')} |")
    if result.get("throughput") and "ratio" in result["throughput"]:
        throughput = result["throughput"]
        lines += ["", f"Training throughput on {throughput['train_images']:,} training images "
                  f"({result['datasets'][0]['name']}): `fit_variant` on `load_prepared` vs bare `model.fit` on float32 "
                  "arrays (same `build_model` network and compile), each fit a process of its own, alternating:", "",
                  throughput_markdown({"rows": [throughput]})]
    lines += ["", "| goal | figure | |", "|---|---|---|"]
    if baseline.get("measured_at") == about["time"]:
        lines[-2:-2] = ["This run is the baseline (scale_baseline.json): the bytes goals compare it with itself.", ""]
    for goal, figure, met in goals(result, baseline):
        lines.append(f"| {goal} | {figure} | {'met' if met else '**not met**'} |")
    return "\n".join(lines)


def split_section(text: str, title: str) -> tuple[str, str, str] | None:
    """(before, the section titled `title` up to the next "## " heading, after), or None if it is absent."""
    if title + "\n" not in text:
        return None
    before, after = text.split(title + "\n", 1)
    body, *rest = after.split("\n## ", 1)
    return before, title + "\n" + body, "\n## " + rest[0] if rest else ""


def write_section(body: str, title: str = SECTION) -> None:
    """Put the section into benchmarks/results.md: in place of an earlier one, else at the end."""
    text = RESULTS.read_text() if RESULTS.is_file() else "# Benchmark results\n"
    section = f"{title}\n\n{body}\n"
    parts = split_section(text, title)
    text = parts[0] + section + parts[2] if parts else text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text)


def write_baseline(result: dict[str, Any]) -> None:
    """Merge this run's data sets into scale_baseline.json (a quick run adds its small ones)."""
    baseline = json.loads(BASELINE.read_text()) if BASELINE.is_file() else {"datasets": {}}
    baseline.update({"commit": result["machine"]["code"], "measured_at": result["machine"]["time"],
                     "machine": result["machine"],
                     "note": "today's design: data/prepared holds float32 arrays (4 bytes per pixel), training "
                             "slices the whole array with tf.data.Dataset.from_tensor_slices"})
    baseline["datasets"].update({dataset["name"]: dataset for dataset in result["datasets"]})
    if result.get("throughput"):
        baseline.setdefault("throughput", {})[result["mode"]] = result["throughput"]
    BASELINE.write_text(json.dumps(baseline, indent=2) + "\n")


def measure(sizes: list[int], colour: int, data_dir: Path, epochs: int, rounds: int, seed: int,
            group: MemoryGroup | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    about = machine()
    specs = [{"name": f"idx-{size}", "kind": "idx", "images": size} for size in sizes]
    if colour:
        specs.append({"name": f"folder-{colour}-64x64x3", "kind": "folder", "images": colour})
    datasets, throughput = [], None
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as scratch:
        for index, spec in enumerate(specs):
            after_prepare = (lambda project: measure_throughput(project, epochs, rounds)) \
                if index == 0 and rounds else None
            datasets.append(measure_dataset(spec, data_dir, Path(scratch), seed, after_prepare, group))
            throughput = throughput or datasets[-1].pop("extra")
            datasets[-1].pop("extra", None)
    about["load_1min"] = f"{about['load_1min']}-{load_average()}"
    return {"machine": about, "datasets": datasets, "throughput": throughput,
            "minutes": (time.perf_counter() - started) / 60}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="60000,300000", help="IDX data sets (28x28x1); the first gets throughput")
    parser.add_argument("--colour", type=int, default=50_000, help="64x64x3 PNGs in class folders (0: none)")
    parser.add_argument("--quick", action="store_true", help="6,000 and 12,000 images, 2,000 colour")
    parser.add_argument("--data-dir", type=Path, help="cache of the generated data (default: a temp dir)")
    parser.add_argument("--epochs", type=int, default=1, help="of each throughput fit")
    parser.add_argument("--rounds", type=int, default=4,
                        help="throughput rounds (pipeline and bare fit each); 0: no throughput measurement")
    parser.add_argument("--memory-limit", type=float, metavar="BYTES",
                        help="run every stage in a cgroup v1 memory group of this limit (root; see "
                             f"benchmarks/cgroup.py) and write the section '{LIMITED_SECTION[3:]}' instead")
    parser.add_argument("--write-baseline", action="store_true", help=f"record the figures in {BASELINE.name}")
    parser.add_argument("--no-results", action="store_true", help="do not write benchmarks/results.md")
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    parser.add_argument("--render", type=Path, help="no measuring: the section of a result --out wrote")
    parser.add_argument("--worker", choices=["pipeline", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--project", type=Path, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.worker:
        print(json.dumps(fit_once(arguments.worker, arguments.project, arguments.epochs)))
        return
    if arguments.render:
        text = markdown(json.loads(arguments.render.read_text()),
                        json.loads(BASELINE.read_text()) if BASELINE.is_file() else {})
        if not arguments.no_results:
            write_section(text, LIMITED_SECTION if json.loads(arguments.render.read_text()).get("memory_limit_bytes")
                          else SECTION)
        print(text)
        return
    sizes = [6_000, 12_000] if arguments.quick else [int(size) for size in arguments.sizes.split(",")]
    colour = 2_000 if arguments.quick else arguments.colour
    params_seed = default_params()["seed"]
    group = None
    if arguments.memory_limit:
        try:
            group = MemoryGroup.create(arguments.memory_limit)
        except CgroupError as error:
            parser.error(str(error))
    try:
        with tempfile.TemporaryDirectory(prefix="bench-scale-data-") as default_dir:
            data_dir = arguments.data_dir or Path(default_dir)
            data_dir.mkdir(parents=True, exist_ok=True)
            result = measure(sizes, colour, data_dir, arguments.epochs, arguments.rounds, params_seed, group)
    finally:
        if group is not None:
            group.remove()
    result["mode"] = ("quick" if arguments.quick else "full") + \
        (f", memory limit {group.limit_bytes / 1e9:.2f} GB" if group is not None else "")
    result["memory_limit_bytes"] = group.limit_bytes if group is not None else None
    if arguments.out:
        arguments.out.write_text(json.dumps(result, indent=2))
    if arguments.write_baseline:
        write_baseline(result)
    baseline = json.loads(BASELINE.read_text()) if BASELINE.is_file() else {}
    text = markdown(result, baseline)
    if not arguments.no_results:
        write_section(text, LIMITED_SECTION if group is not None else SECTION)
    print(text)


if __name__ == "__main__":
    main()
