"""Benchmark 1: training throughput of `fit_variant` vs the seed notebooks' bare `model.fit`,
and candidate speed-ups of the pipeline's fit, each on its own.

Side by side means seconds apart: one worker process fits the arms of a comparison alternately, per
variant (pipeline, bare, bare, pipeline, ... for the headline ratio; baseline, two candidates,
baseline, ... for the candidates), after a short warm-up fit. A fit's ratio is taken against the
baseline fits right before and after it, so a load swing on the shared machine hits both sides.
Only options that are fixed once per process (TensorFlow's thread pools) need separate processes;
those alternate process by process.

Op determinism is process-wide: fits of arms without it call
`tensorflow.python.framework.config.disable_op_determinism()` first (`fit_variant` switches it on
again through `set_determinism`).

    python -m benchmarks.throughput <spec.json> <result.json>    # one worker (what the harness runs)
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import alternating, bench_env, geometric_mean, median, run_python_worker, spread, worker_main

# name -> (description, options). Every candidate is a modified copy *inside* benchmarks/:
#   bare: the seed-notebook script instead of fit_variant;
#   dataset: pipeline.train._dataset with tf.data's cache / prefetch calls replaced while it builds;
#   backup: False = BackupAndRestore (and train._record_backup, when present) replaced by no-ops;
#   deterministic: False = seeds only, no tf.config.experimental.enable_op_determinism;
#   jit: train.jit_compile=True through the params; steps_per_execution: injected into compile;
#   threads: (intra, inter) via tf.config.threading before the first op (process-wide).
ARMS: dict[str, tuple[str, dict[str, Any]]] = {
    "pipeline": ("fit_variant as the train stage calls it (the baseline of the candidates)", {}),
    "bare": ("seed-notebook script: NumPy arrays into model.fit, plain Keras layers", {"bare": True}),
    "no_cache_prefetch": ("tf.data without .cache() and .prefetch() (what they buy today)",
                          {"dataset": {"cache": False, "prefetch": None}}),
    "prefetch_8": ("prefetch(8) instead of prefetch(AUTOTUNE)", {"dataset": {"prefetch": 8}}),
    "jit_param": ("train.jit_compile: true as a user sets it; Keras keeps XLA off under op determinism, so this "
                  "runs the baseline's code again: the A/A control, its ratio shows the noise", {"jit": True}),
    "jit_no_determinism": ("XLA that really compiles: jit_compile=True, op determinism off",
                           {"jit": True, "deterministic": False}),
    "no_determinism": ("seeds only, without enable_op_determinism", {"deterministic": False}),
    "no_backup": ("without BackupAndRestore (and the pipeline's backup manifest): what crash safety costs",
                  {"backup": False}),
    "steps_per_execution_8": ("compile(steps_per_execution=8)", {"steps_per_execution": 8}),
    # 19 divides the 57 steps of an epoch (3,600 images, batch 64): 8 does not, and over fit_variant's one
    # dataset spanning all epochs Keras then runs 64 steps per epoch (the epochs' boundaries shift).
    "steps_per_execution_19": ("compile(steps_per_execution=19), 3 executions per 57-step epoch",
                               {"steps_per_execution": 19}),
    "threads_2_1": ("intra-op 2, inter-op 1 threads (2 cores)", {"threads": [2, 1]}),
    "threads_1_1": ("intra-op 1, inter-op 1 threads", {"threads": [1, 1]}),
    "threads_2_2": ("intra-op 2, inter-op 2 threads", {"threads": [2, 2]}),
}
PROCESS_WIDE = ("threads",)


# --------------------------------------------------------------------------- worker (one process)


def _dataset_with(original: Any, cache: bool = True, prefetch: int | str | None = "autotune") -> Any:
    """pipeline.train._dataset, built with `.cache()` and/or `.prefetch()` replaced while it runs.

    Patching tf.data's methods for the duration of the call (instead of copying the function) keeps
    the candidate in step with whatever `_dataset` currently does; only the named calls change.
    """

    def _dataset(*args: Any, **kwargs: Any) -> Any:
        import tensorflow as tf

        dataset_class = tf.data.Dataset
        saved_cache, saved_prefetch = dataset_class.cache, dataset_class.prefetch
        if not cache:
            dataset_class.cache = lambda self, *_, **__: self
        if prefetch is None:
            dataset_class.prefetch = lambda self, *_, **__: self
        elif prefetch != "autotune":
            dataset_class.prefetch = lambda self, *_, **__: saved_prefetch(self, int(prefetch))
        try:
            return original(*args, **kwargs)
        finally:
            dataset_class.cache, dataset_class.prefetch = saved_cache, saved_prefetch

    return _dataset


def _without_backup() -> Any:
    """A stand-in for keras.callbacks.BackupAndRestore that saves nothing."""
    import keras

    class NoBackup(keras.callbacks.Callback):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__()

    return NoBackup


def _seeds_only(seed: int) -> None:
    import keras

    keras.utils.set_random_seed(seed)


class Worker:
    """Fits variants with the options of any non-process-wide arm, restoring the originals between fits."""

    def __init__(self, spec: dict[str, Any]) -> None:
        from pipeline import train
        from pipeline.config import load_params
        from pipeline.prepare import load_prepared

        self.spec = spec
        self.train = train
        import keras

        self.keras = keras
        self.original = {"_dataset": train._dataset, "set_determinism": train.set_determinism,
                         "BackupAndRestore": keras.callbacks.BackupAndRestore,
                         "_record_backup": getattr(train, "_record_backup", None)}
        self.data = load_prepared(spec["prepared_dir"])
        # Like for like with the bare scripts: every variant at the spec's epochs and batch size (a
        # variant's own setting of a key wins over train.*, so set them per variant), no augmentation.
        variants = load_params(spec["params_file"]).models
        overrides = {"train.augment.rotation": 0.0, "train.augment.translation": 0.0, "train.augment.zoom": 0.0,
                     **{f"models.{name}.train.{key}": value for name in variants
                        for key, value in (("epochs", spec["epochs"]), ("batch_size", spec["batch_size"]))}}
        self.config = load_params(spec["params_file"], overrides=overrides)
        self.jit_config = load_params(spec["params_file"], overrides={**overrides, "train.jit_compile": True})

    def warm_up(self) -> None:
        """One short fit, so the first measured fit does not also pay the process's one-time start."""
        from benchmarks.seed_scripts import fit_seed_script

        data = self.data
        fit_seed_script("three_conv", data.x_train[:512], data.y_train[:512], data.x_val[:128], data.y_val[:128],
                        data.num_classes, self.spec["batch_size"], 1)

    def fit(self, arm: str, variant: str) -> dict[str, Any]:
        from tensorflow.python.framework import config as tf_config

        from benchmarks.instruments import instrument_fit, throughput
        from benchmarks.seed_scripts import fit_seed_script

        options = ARMS[arm][1]
        train, data = self.train, self.data
        deterministic = not options.get("bare") and options.get("deterministic", True)
        original = self.original
        train._dataset = (_dataset_with(original["_dataset"], **options["dataset"]) if "dataset" in options
                          else original["_dataset"])
        train.set_determinism = original["set_determinism"] if deterministic else _seeds_only
        backup = options.get("backup", True)
        self.keras.callbacks.BackupAndRestore = original["BackupAndRestore"] if backup else _without_backup()
        if original["_record_backup"] is not None:
            train._record_backup = original["_record_backup"] if backup else (lambda *_, **__: None)
        if not deterministic:
            tf_config.disable_op_determinism()
        records: list[dict[str, Any]] = []
        load = os.getloadavg()[0]
        scratch = Path(tempfile.mkdtemp(prefix=f"bench-{variant}-"))
        started = time.perf_counter()
        with instrument_fit(records, steps_per_execution=options.get("steps_per_execution")):
            if options.get("bare"):
                model = fit_seed_script(variant, data.x_train, data.y_train, data.x_val, data.y_val,
                                        data.num_classes, self.spec["batch_size"], self.spec["epochs"])
                params = int(model.count_params())
            else:
                config = self.jit_config if options.get("jit") else self.config
                params = int(train.fit_variant(config, variant, data, scratch, verbose=2).info["params"])
        total = time.perf_counter() - started
        shutil.rmtree(scratch, ignore_errors=True)
        record = records[-1]
        timing = throughput(record.pop("clock"), len(data.y_train), self.spec["batch_size"])
        return {"arm": arm, "variant": variant, "params": params, "total_seconds": total,
                "setup_seconds": total - record["fit_seconds"], "train_images": len(data.y_train),
                "op_determinism": deterministic, "load_1min": load, **record, **timing}


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    threads = spec.get("threads")
    if threads:
        import tensorflow as tf  # before any op runs: the thread pools are created at the first op

        tf.config.threading.set_intra_op_parallelism_threads(threads[0])
        tf.config.threading.set_inter_op_parallelism_threads(threads[1])
    import keras  # noqa: F401 - imported before any clock starts, in every worker

    worker = Worker(spec)
    worker.warm_up()
    fits = []
    for variant, sequence in spec["sequences"].items():
        for position, arm in enumerate(sequence):
            fits.append({"position": position, **worker.fit(arm, variant)})
    return {"fits": fits, "threads": threads}


# --------------------------------------------------------------------------- orchestration


def neighbour_ratios(fits: list[dict[str, Any]], arm: str, baseline: str, variant: str,
                     key: str = "steady_images_per_second", invert: bool = False) -> list[float]:
    """For each fit of `arm`: its value / the mean of the nearest `baseline` fits before and after it
    (same worker, same variant). `invert`: baseline / arm (for times)."""
    rows = sorted((row for row in fits if row["variant"] == variant), key=lambda row: row["position"])
    ratios = []
    for index, row in enumerate(rows):
        if row["arm"] != arm or not row.get(key):
            continue
        before = next((other[key] for other in reversed(rows[:index]) if other["arm"] == baseline), None)
        after = next((other[key] for other in rows[index + 1:] if other["arm"] == baseline), None)
        neighbours = [value for value in (before, after) if value]
        if neighbours:
            reference = sum(neighbours) / len(neighbours)
            ratios.append(reference / row[key] if invert else row[key] / reference)
    return ratios


def candidate_sequence(candidates: list[str], group: int = 2) -> list[str]:
    """pipeline, c1, c2, pipeline, c3, c4, pipeline: every candidate sits next to a baseline fit."""
    sequence = ["pipeline"]
    for start in range(0, len(candidates), group):
        sequence += [*candidates[start:start + group], "pipeline"]
    return sequence


def measure(prepared_project: Path, work: Path, variants: list[str], rounds: int, candidates: dict[str, list[str]],
            thread_candidates: list[str], thread_variant: str, thread_rounds: int, epochs: int, batch_size: int,
            log: Any = print) -> dict[str, Any]:
    """The headline comparison (one worker, pipeline/bare alternating per variant), the in-process
    candidates (one worker, each candidate next to a baseline fit), the thread settings (alternating
    processes). `candidates`: variant -> candidate arms to try on it."""
    from benchmarks.common import load_average

    base_spec = {"epochs": epochs, "batch_size": batch_size,
                 "prepared_dir": str(prepared_project / "data" / "prepared"),
                 "params_file": str(prepared_project / "params.yaml")}
    env = bench_env(home=work)
    loads: list[float] = []

    def worker(name: str, sequences: dict[str, list[str]], threads: list[int] | None = None) -> list[dict[str, Any]]:
        load = load_average()["1min"]
        loads.append(load)
        started = time.perf_counter()
        # From inside the project copy: its snapshot of `pipeline`, not the live, possibly edited one.
        outcome = run_python_worker("benchmarks.throughput", {**base_spec, "sequences": sequences, "threads": threads},
                                    work / "throughput", name, env, cwd=prepared_project)
        loads.append(load_average()["1min"])
        log(f"  worker {name:<28} {time.perf_counter() - started:6.1f}s (load {load:.2f} -> {loads[-1]:.2f})")
        return outcome["fits"]

    # Headline: per variant pipeline, bare, bare, pipeline (rounds=2); odd variants start with bare.
    main_sequences = {}
    for index, variant in enumerate(variants):
        sequence: list[str] = []
        for round_index in range(rounds):
            sequence += alternating(["pipeline", "bare"], round_index + index)
        main_sequences[variant] = sequence
    main_fits = worker("pipeline-vs-bare", main_sequences)
    candidate_fits = worker("candidates", {variant: candidate_sequence(arms) for variant, arms in candidates.items()}
                            ) if candidates else []
    thread_fits = []
    for round_index in range(thread_rounds if thread_candidates else 0):
        for arm in alternating(["pipeline", *thread_candidates], round_index):
            threads = ARMS[arm][1].get("threads")
            for row in worker(f"threads-round{round_index}-{arm}", {thread_variant: ["pipeline"]}, threads):
                thread_fits.append({**row, "arm": arm, "round": round_index})
    return {"fits": {"main": main_fits, "candidates": candidate_fits, "threads": thread_fits},
            "summary": summarise(main_fits, candidate_fits, thread_fits, variants, candidates, thread_candidates,
                                 thread_variant),
            "load_1min_during": spread(loads), "epochs": epochs, "batch_size": batch_size, "rounds": rounds,
            "thread_rounds": thread_rounds, "train_images": main_fits[0]["train_images"] if main_fits else None,
            "arms": {arm: ARMS[arm][0] for arm in ARMS}}


def summarise(main_fits: list[dict[str, Any]], candidate_fits: list[dict[str, Any]], thread_fits: list[dict[str, Any]],
              variants: list[str], candidates: dict[str, list[str]], thread_candidates: list[str],
              thread_variant: str) -> dict[str, Any]:
    def per_arm(fits: list[dict[str, Any]], arm: str, variant: str) -> dict[str, Any]:
        rows = [row for row in fits if row["arm"] == arm and row["variant"] == variant]
        return {"steady_images_per_second": median(row["steady_images_per_second"] for row in rows),
                "first_epoch_seconds": median(row["first_epoch_seconds"] for row in rows),
                "fit_seconds": median(row["fit_seconds"] for row in rows),
                "params": rows[0]["params"] if rows else None, "fits": len(rows),
                "jit_compile_effective": any(row["jit_compile_effective"] for row in rows)}

    summary: dict[str, Any] = {"pipeline_vs_bare": [], "candidates": [], "threads": []}
    for variant in variants:
        pipeline, bare = per_arm(main_fits, "pipeline", variant), per_arm(main_fits, "bare", variant)
        steady = neighbour_ratios(main_fits, "pipeline", "bare", variant)
        cpu = neighbour_ratios(main_fits, "pipeline", "bare", variant, key="steady_images_per_cpu_second")
        whole = neighbour_ratios(main_fits, "pipeline", "bare", variant, key="fit_seconds", invert=True)
        summary["pipeline_vs_bare"].append({
            "variant": variant, "params_pipeline": pipeline["params"], "params_bare": bare["params"],
            "bare_images_per_second": bare["steady_images_per_second"],
            "pipeline_images_per_second": pipeline["steady_images_per_second"],
            "bare_first_epoch_seconds": bare["first_epoch_seconds"],
            "pipeline_first_epoch_seconds": pipeline["first_epoch_seconds"],
            "ratio": median(steady), "ratio_range": spread(steady), "ratios": steady,
            "cpu_ratio": median(cpu), "cpu_ratio_range": spread(cpu),
            "loads": [row["load_1min"] for row in main_fits if row["variant"] == variant],
            "ratio_whole_fit": median(whole), "goal": 0.95, "meets_goal": median(steady) >= 0.95})
    arms_tried = list(dict.fromkeys(arm for arms in candidates.values() for arm in arms))
    for arm in arms_tried:
        steady, ranges, cpu, whole, effective = {}, {}, {}, {}, False
        for variant, arms in candidates.items():
            if arm not in arms:
                continue
            ratios = neighbour_ratios(candidate_fits, arm, "pipeline", variant)
            steady[variant], ranges[variant] = median(ratios), spread(ratios)
            cpu[variant] = median(neighbour_ratios(candidate_fits, arm, "pipeline", variant,
                                                   key="steady_images_per_cpu_second"))
            whole[variant] = median(neighbour_ratios(candidate_fits, arm, "pipeline", variant, key="fit_seconds",
                                                     invert=True))
            effective = effective or per_arm(candidate_fits, arm, variant)["jit_compile_effective"]
        summary["candidates"].append({
            "candidate": arm, "description": ARMS[arm][0], "steady_ratio": steady, "steady_ratio_range": ranges,
            "steady_geomean": geometric_mean(steady.values()), "cpu_ratio": cpu,
            "cpu_geomean": geometric_mean(cpu.values()), "whole_fit_ratio": whole,
            "whole_fit_geomean": geometric_mean(whole.values()), "jit_compile_effective": effective})
    for arm in thread_candidates:
        ratios, cpu, whole = [], [], []
        for round_index in {row["round"] for row in thread_fits}:
            by_arm = {row["arm"]: row for row in thread_fits if row["round"] == round_index}
            if arm in by_arm and "pipeline" in by_arm:
                ratios.append(by_arm[arm]["steady_images_per_second"] / by_arm["pipeline"]["steady_images_per_second"])
                whole.append(by_arm["pipeline"]["fit_seconds"] / by_arm[arm]["fit_seconds"])
                cpu.append(by_arm[arm]["steady_images_per_cpu_second"]
                           / by_arm["pipeline"]["steady_images_per_cpu_second"])
        summary["threads"].append({"candidate": arm, "description": ARMS[arm][0], "variant": thread_variant,
                                   "steady_ratio": median(ratios), "steady_ratio_range": spread(ratios),
                                   "cpu_ratio": median(cpu),
                                   "whole_fit_ratio": median(whole)})
    return summary


if __name__ == "__main__":
    worker_main(run_worker)
