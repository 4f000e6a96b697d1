"""The results as markdown tables (printed, and written to benchmarks/results.md) and JSON."""

from __future__ import annotations

import math
from typing import Any


def _number(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def _ratio(value: Any, low_high: Any = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = f"{value:.3f}"
    if low_high and len(low_high) == 2 and low_high[0] != low_high[1]:
        text += f" ({low_high[0]:.3f}-{low_high[1]:.3f})"
    return text


def _percent(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value * 100:+.1f}%"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return [*lines, ""]


def _goal(met: Any) -> str:
    return "-" if met is None else ("**met**" if met else "**missed**")


def _load(value: Any) -> str:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return f"{value[0]:.2f}-{value[1]:.2f}"
    return _number(value, 2)


def machine_section(machine: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    versions = machine["versions"]
    lines = ["## Machine", ""]
    lines += _table(["CPU", "cores", "RAM", "Python", "TensorFlow", "Keras", "MLflow", "Prefect", "DVC"], [[
        machine["cpu_model"], f"{machine['usable_cores']} usable of {machine['cores']}", f"{machine['ram_gb']} GB",
        machine["python"], versions["tensorflow"], versions["keras"], versions["mlflow"], versions["prefect"],
        versions["dvc"]]])
    code = meta.get("code")
    if code:
        lines += [f"Code measured: commit {code['commit']} ({code['subject']})"
                  + (f" plus uncommitted changes in {', '.join(line[3:] for line in code['uncommitted'])}"
                     if code["uncommitted"] else "") + ", copied once at the start of the run.", ""]
    lines += [f"Run: {meta['mode']} mode, started {meta['started']}, took {meta.get('total_seconds', 0) / 60:.1f} min. "
              f"Load average (1/5/15 min) at start {meta['load_at_start']}, at end {meta.get('load_at_end')}. "
              f"Absolute times are representative only below a 1-minute load of ~0.7 on this 2-core machine; "
              f"ratios are measured side by side and hold under load.", ""]
    return lines


def _verdict(wall: float, cpu: float | None = None) -> str:
    """helps / hurts / no effect when wall-time and CPU-time ratios agree (3% band), else unclear."""
    def side(ratio: float | None) -> str | None:
        if ratio is None or math.isnan(ratio):
            return None
        return "helps" if ratio >= 1.03 else "hurts" if ratio <= 0.97 else "no clear effect (within 3%)"

    wall_side, cpu_side = side(wall), side(cpu)
    if wall_side is None:
        return "-"
    if cpu_side is None or cpu_side == wall_side:
        return wall_side
    return f"unclear: wall says {wall_side.split(' (')[0]}, CPU time says {cpu_side.split(' (')[0]}"


def throughput_section(result: dict[str, Any]) -> list[str]:
    summary = result["summary"]
    lines = ["## 1. Training throughput: pipeline `fit_variant` vs the seed notebooks' bare `model.fit`", "",
             f"{result.get('train_images') or 3600} training images, 400 validation images, batch "
             f"{result['batch_size']}, {result['epochs']} epochs. One worker process fits pipeline and bare "
             f"alternately per variant ({result['rounds']} fit(s) each, after a warm-up fit); load during "
             f"{_load(result['load_1min_during'])}. **Rule:** the first epoch (tracing, graph building, warm-up) is "
             "left out: images/s = training images x (epochs - 1) / (end of the last epoch - end of epoch 1); each "
             "interval holds a training pass, a validation pass and the per-epoch callbacks (pipeline: "
             "BackupAndRestore checkpoint, CSV log, early stopping). Ratio = pipeline fit / mean of the bare fits "
             "next to it, median (range); CPU ratio = the same with process CPU time (robust to other load, blind "
             "to overlap); whole-fit ratio = bare fit time / pipeline fit time, first epoch included.", ""]
    rows = []
    for row in summary["pipeline_vs_bare"]:
        params = _number(row["params_pipeline"], 0)
        if row["params_pipeline"] != row["params_bare"]:
            params += f" (bare {_number(row['params_bare'], 0)}!)"
        rows.append([row["variant"], params, _number(row["bare_images_per_second"], 0),
                     _number(row["pipeline_images_per_second"], 0), _ratio(row["ratio"], row["ratio_range"]),
                     _ratio(row.get("cpu_ratio"), row.get("cpu_ratio_range")), _ratio(row["ratio_whole_fit"]),
                     f"{_number(row['bare_first_epoch_seconds'])} / {_number(row['pipeline_first_epoch_seconds'])}",
                     _goal(row["meets_goal"])])
    lines += _table(["variant", "params", "bare img/s", "pipeline img/s", "ratio (goal >= 0.95)",
                     "CPU ratio", "whole-fit ratio", "first epoch s (bare / pipeline)", "goal"], rows)
    if summary["candidates"]:
        variants = list(dict.fromkeys(variant for row in summary["candidates"] for variant in row["steady_ratio"]))
        lines += ["### Candidate speed-ups of the pipeline fit, each alone", "",
                  "One worker: per variant pipeline, two candidates, pipeline, two candidates, ...; ratio = "
                  "candidate's steady images/s / mean of the pipeline fits before and after it (> 1 = faster). "
                  "Whole-fit = pipeline fit time / candidate fit time, first epoch (and any XLA compilation) "
                  "included.", ""]
        rows = []
        for row in summary["candidates"]:
            cells = [f"{_ratio(row['steady_ratio'][variant])} / {_ratio(row['cpu_ratio'].get(variant))}"
                     if variant in row["steady_ratio"] else "-" for variant in variants]
            whole = " / ".join(f"{row['whole_fit_ratio'][variant]:.2f}" for variant in row["whole_fit_ratio"])
            verdict = _verdict(row["steady_geomean"], row.get("cpu_geomean"))
            if row["candidate"].startswith("jit"):
                verdict += "; XLA on" if row["jit_compile_effective"] else "; XLA stayed OFF"
            rows.append([f"`{row['candidate']}`", row["description"], *cells, whole, verdict])
        lines += _table(["candidate", "what", *[f"{variant} wall / CPU" for variant in variants],
                         "whole-fit", "verdict (steady)"], rows)
    if summary.get("threads"):
        lines += [f"### Thread settings (process-wide: alternating processes, {result['thread_rounds']} rounds)", ""]
        lines += _table(["candidate", "what", "variant", "steady ratio vs default", "CPU ratio", "whole-fit ratio",
                         "verdict"],
                        [[f"`{row['candidate']}`", row["description"], row["variant"],
                          _ratio(row["steady_ratio"], row["steady_ratio_range"]), _ratio(row.get("cpu_ratio")),
                          _ratio(row["whole_fit_ratio"]), _verdict(row["steady_ratio"], row.get("cpu_ratio"))]
                         for row in summary["threads"]])
    return lines


def repro_section(result: dict[str, Any], quick: bool) -> list[str]:
    full = result["full"]
    lines = ["## 2. Default `dvc repro` (fresh project copy" + (", quick params: NOT the default run" if quick
                                                                else ", real params.yaml") + ")", "",
             (f"Median of {len(result['full_totals'])} full runs on fresh copies: "
              f"**{result['median_total_seconds']:.1f} s** (runs: "
              + ", ".join(f"{total:.1f}" for total in result["full_totals"]) + " s; "
              if result.get("full_totals") else "")
             + f"goal <= 150 s: {_goal(None if quick else result['meets_goal'])}). The first run, by stage: total "
             f"**{full['total_seconds']:.1f} s**, "
             f"{full['stages_run']} stages, {full.get('cpu_seconds', float('nan')):.0f} CPU-seconds in all its "
             f"processes (2 cores), load {full['load_1min_at_start']:.2f} at start, "
             f"{full['load_1min_at_end']:.2f} at end. DVC before the first stage: "
             f"{full['dvc_before_first_stage_seconds']:.1f} s.", ""]
    rows = []
    for stage in full["stages"]:
        fit = ""
        if stage["stage"].startswith("train@"):
            facts = full["training"].get(stage["stage"].split("@", 1)[1])
            if facts:
                fit = (f"{facts['train_seconds']:.1f} ({facts['epochs_run']} epochs, "
                       f"{facts['images_per_second']:.0f} img/s)")
        share = f"{stage['seconds'] / full['total_seconds']:.0%}"
        rows.append([stage["stage"], _number(stage["seconds"]), share, fit])
    lines += _table(["stage", "seconds", "share", "of which model.fit (s)"], rows)
    single = result.get("one_process")
    if single:
        functions = single["stage_function_seconds"]
        lines += [f"**The same stages in one Python process** (a second fresh copy; run_ingest ... register_best and "
                  f"dvc commit called in a row, as the Prefect flow does without Prefect): "
                  f"**{single['process_seconds']:.1f} s**, {single.get('cpu_seconds', float('nan')):.0f} CPU-seconds "
                  f"(imports {single['imports_seconds']:.1f} s, load "
                  f"{single['load_1min_at_start']:.2f} at start, {single['load_1min_at_end']:.2f} at end) vs "
                  f"{full['total_seconds']:.1f} s for `dvc repro`. Inside: "
                  + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in functions.items()) + ".", ""]
    exits = result.get("exit_cost")
    if exits:
        lines += [f"**Ending a process that imported TensorFlow** (`python -c 'import tensorflow'`, median of "
                  f"{len(exits['runs']['normal'])}): {exits['normal_exit_seconds']:.2f} s with the normal interpreter "
                  f"exit (module teardown), {exits['hard_exit_seconds']:.2f} s with `os._exit(0)`; load "
                  f"{exits['load_1min']:.2f}. `python -m pipeline` skips that teardown after a finished command "
                  "(pipeline/__main__.py); the stage probes below call the command functions from their own "
                  "script and still pay it.", ""]
    for name, probe in result.get("probes", {}).items():
        lines += probe_section(name, probe)
    return lines


def probe_section(stage: str, probe: dict[str, Any]) -> list[str]:
    total = probe["process_seconds"]
    # An argument is a string, or a list for a command taking several (evaluate [VARIANT...]).
    arguments = " ".join(" ".join(item) if isinstance(item, list) else item for item in probe["arguments"])
    lines = [f"### Where one `{stage}{' ' + arguments if arguments else ''}` stage spends its time "
             f"({total:.1f} s in its own process, load {probe['load_1min_at_start']:.2f})", ""]
    start_exit = probe["interpreter_start_and_exit_seconds"]
    rows = [["Python start-up and exit (interpreter, atexit, TF teardown)", _number(start_exit),
             f"{start_exit / total:.0%}"],
            ["imports (all, in the stage's order)", _number(probe["imports_seconds"]),
             f"{probe['imports_seconds'] / total:.0%}"]]
    accounted = 0.0
    for label, entry in probe["phases"].items():
        indent = "&nbsp;&nbsp;&nbsp;&nbsp;" if entry["parent"] else ""
        if not entry["parent"]:
            accounted += entry["seconds"]
        rows.append([indent + label, _number(entry["seconds"], 2), f"{entry['seconds'] / total:.0%}"])
    rows.append(["other (between the timed phases)", _number(probe["stage_seconds"] - accounted, 2),
                 f"{(probe['stage_seconds'] - accounted) / total:.0%}"])
    lines += _table(["phase", "seconds", "share"], rows)
    lines += ["Imports in the stage's order (each: what it added): "
              + ", ".join(f"{name} {seconds:.1f}" for name, seconds in probe["imports"].items()) + ".", ""]
    packages = probe["importtime"]["packages"]
    cells = []
    for name, entry in packages.items():
        parent = entry["first_imported_under"]
        cells.append(f"{name} {entry['seconds']:.1f}" + (f" (in {parent})" if parent != name else ""))
    lines += [f"`-X importtime` (cumulative seconds at first import; nested ones count inside their parent; total "
              f"{probe['importtime']['total_seconds']:.1f} s, inflated by importtime itself): " + ", ".join(cells), ""]
    return lines


def noop_section(result: dict[str, Any]) -> list[str]:
    noop = result["noop"]
    lines = ["## 3. No-op `dvc repro` (nothing changed)", "",
             f"Median of {len(noop['runs_seconds'])}: **{noop['median_seconds']:.2f} s** (goal <= 3 s: "
             f"{_goal(noop['meets_goal'])}); runs {', '.join(f'{value:.2f}' for value in noop['runs_seconds'])}; "
             f"median CPU time {noop.get('median_cpu_seconds', float('nan')):.2f} s; "
             f"load {_load(noop['load_1min_during'])}. A bare `python -c pass` takes "
             f"{noop['interpreter_start_seconds']:.2f} s and `import dvc.cli, dvc.repo` "
             f"{noop['import_dvc_process_seconds']:.2f} s in a new process; imports in the profiled run "
             f"{noop['imports_in_profiled_run']:.2f} s (-X importtime).", "",
             "Largest cumulative times in one cProfile'd no-op run "
             f"({noop['profiled_run_seconds']:.1f} s under the profiler):", ""]
    lines += _table(["function", "cumulative s", "calls"],
                    [[f"`{row['function']}`", _number(row["cumulative_seconds"], 2), row["calls"]]
                     for row in noop["top_functions"][:12]])
    return lines


def flow_section(result: dict[str, Any]) -> list[str]:
    lines = ["## 4. Prefect flow vs the same stage functions called directly", "",
             (f"{result['images']} images, variants {', '.join(result['variants'])}, {result['epochs']} epochs"
              if result.get("variants") else "The default params (all 5,000 images, all variants, their epochs)")
             + ", "
             f"fresh project copies, force=True, {result['rounds']} rounds alternating; load "
             f"{_load(result['load_1min_during'])}.", ""]
    lines += ["Two measures: *wall* = flow run / direct run of the same round - 1 (median of rounds; includes "
              "run-to-run noise, large under load); *attributed* = time of the call outside the stage functions "
              "(and dvc commit) / time inside them, within one run (robust under load, but misses Prefect "
              "slowing the stage functions down, e.g. its API server competing for the 2 cores).", ""]
    lines += _table(["arm", "seconds (median)", "attributed overhead"], [
        ["direct calls", _number(result["direct_seconds"]), _percent(result["direct_attributed_overhead"])],
        ["`training_flow(force=True)` under prefect_test_harness", _number(result["flow_seconds"]),
         _percent(result["attributed_overhead"])],
        ["wall overhead (flow / direct - 1)",
         f"**{_percent(result['overhead'])}** ({_percent(result['overhead_range'][0])} to "
         f"{_percent(result['overhead_range'][1])})", f"goal <= +10%: {_goal(result['meets_goal'])}"],
        ["CPU-time overhead of the flow's own process (flow / direct - 1; without the API server process)",
         _percent(result.get("cpu_overhead")), ""],
        ["not in the ratios: importing Prefect + flows.training", _number(result["prefect_import_seconds"]), ""],
        ["not in the ratios: starting the test API server", _number(result["harness_start_seconds"]), ""],
    ])
    functions = result["stage_function_seconds"]
    lines += _table(["stage function (median seconds)", "in the flow", "called directly"],
                    [[name, _number(functions["flow"].get(name), 2), _number(functions["direct"].get(name), 2)]
                     for name in functions["flow"]])
    return lines


def tracking_section(result: dict[str, Any]) -> list[str]:
    lines = [f"## 5. Tracking overhead: `run_training({result['variant']}, track=True)` vs `track=False`", "",
             f"Default params, {result['rounds']} rounds in one warmed-up process; load "
             f"{result['load_1min_at_start']:.2f} at start, {result['load_1min_at_end']:.2f} at end.", ""]
    lines += ["Two measures: *attributed* = the tracking phases' own time (tracking.setup + `_track`) / the "
              "rest of the same run (robust under load); *wall* = the track=True run / the track=False run "
              "next to it (includes the fit's run-to-run noise, large under load).", ""]
    lines += _table(["arm", "seconds (median)", "attributed overhead", "wall ratio - 1", "CPU-time ratio - 1"], [
        ["track=False", _number(result["off_seconds"]), "", "", ""],
        ["track=True", _number(result["on_seconds"]),
         f"**{_percent(result['attributed_overhead'])}** (goal <= +3%: {_goal(result['meets_goal'])})",
         f"{_percent(result['overhead'])} ({_percent(result['overhead_range'][0])} to "
         f"{_percent(result['overhead_range'][1])})", _percent(result.get("cpu_overhead"))],
        ["+ importing mlflow, mlflow.tensorflow (paid once per stage process)",
         _number(result["mlflow_import_seconds"]),
         _percent(result["attributed_overhead"] + result["mlflow_import_seconds"] / result["off_seconds"]), "", ""],
    ])
    lines += ["What tracking costs (track=True runs, median seconds; nested rows are part of the row above):", ""]
    nested = {"log_training (params, metrics, 4 artifacts)", "log_keras_model", "start/end run"}
    deeper = {"signature inference", "mlflow.tensorflow.log_model"}
    deepest = {"save model in MLflow format", "copy model artifacts to the store"}
    rows = []
    for name, seconds in result["phases_on"].items():
        depth = 1 if name in nested else 2 if name in deeper else 3 if name in deepest else 0
        rows.append(["&nbsp;&nbsp;" * 2 * depth + name, _number(seconds, 2)])
    lines += _table(["phase", "track=True"], rows)
    return lines


def markdown(results: dict[str, Any]) -> str:
    meta, benchmarks = results["meta"], results["benchmarks"]
    lines = ["# Benchmark results", "", "Written by `make bench` (`python -m benchmarks.run`); see "
             "benchmarks/README.md for what each number means.", ""]
    lines += machine_section(results["machine"], meta)
    sections = [("throughput", lambda section: throughput_section(section)),
                ("repro", lambda section: repro_section(section, section.get("quick", False)) + noop_section(section)),
                ("flow", flow_section), ("tracking", tracking_section)]
    for name, render in sections:
        if name not in benchmarks:
            continue
        section = benchmarks[name]
        section_meta = section.get("meta", meta)
        try:
            if "error" in section:
                raise RuntimeError(section["error"].strip().splitlines()[-1])
            body = render(section)
        except (KeyError, TypeError, IndexError, RuntimeError) as error:  # failed, or from an older harness
            body = [f"## {name}", "", f"**Not available** ({error!r}): it failed (see results.json) or is kept from "
                    f"an older harness version; rerun `python -m benchmarks.run --only {name}`.", ""]
        if section_meta.get("started") != meta.get("started"):
            body[1:1] = ["", f"*From an earlier {section_meta['mode']} run started {section_meta['started']} "
                         f"(load at start {section_meta['load_at_start']}).*"]
        lines += body
    return "\n".join(lines).rstrip() + "\n"
