"""`python -m pipeline tune <variant>`: search a variant's settings (`models.<variant>.tune`) with an Optuna
study (`pipeline/study.py`), and report the best trial as the params.yaml settings that reproduce it.

The best trial is rebuilt from its params with the same mapping that drew it, and compared with the
variant params.yaml resolves: the differences are the settings to apply, as dotted keys
(`models.three_conv.train.learning_rate`, `models.three_conv.layers.0.filters`). Applied (`--apply`,
or the printed `dvc exp run -S ...` line), `dvc repro` trains exactly the best trial's model: same
settings, same seed, same data, deterministic ops.

Not a DVC stage: a study is exploration; its result enters the pipeline through params.yaml.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from pipeline.config import PipelineConfig, Variant, load_params, read_params_file
from pipeline.errors import ParamsError
from pipeline.io import write_json
from pipeline.layout import Layout
from pipeline.study import (
    PARENT_RUN_ATTR,
    StudyRef,
    load_tuning_data,
    masked,
    open_storage,
    open_study,
    run_trials,
    search_space,
    storage_url,
    trial_record,
)
from pipeline.trial import METRIC, variant_for_trial


def tuned_settings(base: Variant, tuned: Variant) -> dict[str, Any]:
    """The params.yaml settings that turn `base` into `tuned`, as dotted keys.

    A changed augmentation strength sets the variant's whole `augment` block: a variant's own block
    replaces the global one, so a lone `rotation` would reset the other strengths to 0.
    """
    prefix = f"models.{base.name}"
    settings: dict[str, Any] = {}
    before, after = base.train.model_dump(), tuned.train.model_dump()
    for key, value in after.items():
        if key == "augment" and value != before[key]:
            settings.update({f"{prefix}.train.augment.{name}": strength for name, strength in value.items()})
        elif value != before[key]:
            settings[f"{prefix}.train.{key}"] = value
    for index, (old, new) in enumerate(zip(base.layers, tuned.layers, strict=True)):
        old_fields, new_fields = old.model_dump(), new.model_dump()
        settings.update({f"{prefix}.layers.{index}.{key}": value for key, value in new_fields.items()
                         if value != old_fields.get(key)})
    return settings


def summarize_study(config: PipelineConfig, variant_name: str, root: str | Path, ref: StudyRef,
                    params_file: str | Path, track: bool = True, seconds: float | None = None) -> dict[str, Any]:
    """Write reports/tune/<variant>.json and end the study's parent run (plots, best trial).

    Args:
        config: the validated params (the ones the study ran with).
        variant_name: the study's variant.
        root: the project directory.
        ref: from `open_study`.
        params_file: the params file the settings would be applied to (decides DVC's `+` prefixes).
        track: log figures, results and the best trial on the parent run.
        seconds: this invocation's wall time, for the report.

    Returns:
        The report: trial counts, the best trial (value, params, settings, `dvc exp run` line), every trial.
    """
    import optuna

    from pipeline import plots, tracking
    from pipeline.params_file import set_param_command

    storage = open_storage(storage_url(root), config.tune.heartbeat_seconds)
    study = optuna.load_study(study_name=ref.name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    counts = Counter(trial.state.name for trial in trials)
    base, space = search_space(config, variant_name)
    best = None
    if counts["COMPLETE"]:
        winner = study.best_trial
        settings = tuned_settings(base, variant_for_trial_of(config, variant_name, winner.params, root))
        best = {"trial": winner.number, METRIC: winner.value, "params": winner.params, "settings": settings,
                "dvc_exp_run": set_param_command(settings, read_params_file(params_file)) if settings else None}
    report = {
        "variant": variant_name, "study": ref.name, "storage": masked(storage_url(root)), "metric": METRIC,
        "direction": "maximize", "search_space": space.model_dump(mode="json", exclude_none=True),
        "trials": {state.lower(): counts[state] for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")},
        "best": best, "seconds": round(seconds, 1) if seconds is not None else None,
        "mlflow_parent_run_id": study.user_attrs.get(PARENT_RUN_ATTR),
        "trial_list": [{key: value for key, value in trial_record(trial, {}).items() if key != "history"}
                       for trial in trials],
    }
    path = write_json(Layout(root).tune_report(variant_name), report)
    if track and ref.parent_run_id:
        tracking.setup(root, config.tune.experiment_name)
        with tempfile.TemporaryDirectory() as scratch:
            files = [*plots.save_study_figures(study, Path(scratch)), path]
            metrics = {f"trials_{state}": count for state, count in report["trials"].items()}
            tags = {"study": ref.name}
            if best:
                metrics[f"best_{METRIC}"] = best[METRIC]
                tags.update({"best_trial": str(best["trial"]),
                             **{f"best_params.{key}": str(value) for key, value in best["params"].items()}})
            tracking.finish_study_run(ref.parent_run_id, metrics, tags, files, step=len(trials))
    return report


def run_tune(config: PipelineConfig, variant_name: str, root: str | Path, trials: int | None = None,
             params_file: str | Path = "params.yaml", apply: bool = False, track: bool = True,
             verbose: bool = False) -> dict[str, Any]:
    """The `tune` command: continue (or start) the variant's study until it has `trials` trials with a
    result (complete or pruned), then report the best one and optionally apply it.

    Args:
        config: the validated params.
        variant_name: a key of `config.models` with a `tune` block.
        root: the project directory (data/prepared, reports/tune/, optuna.db).
        trials: the study's target of trials with a result; default `tune.trials`. A rerun after an
            interruption runs only the missing ones.
        params_file: where `--apply` writes the best trial's settings.
        apply: write them into `params_file` (comments and layout kept, as `dvc exp run -S` would).
        track: MLflow parent and child runs (experiment `tune.experiment_name`).
        verbose: Optuna's own log lines.

    Returns:
        The report written to reports/tune/<variant>.json, plus "orphans" (trials of killed processes
        this run marked failed), "added" (this run's counts) and "applied".
    """
    started = time.perf_counter()
    target = config.tune.trials if trials is None else trials
    if target < 0:
        raise ParamsError(f"--trials must be 0 or more, got {target}")
    ref = open_study(config, variant_name, root, track=track, verbose=verbose)
    wanted = max(0, target - ref.results)
    added = run_trials(config, variant_name, root, ref, wanted, track=track, verbose=verbose)
    report = summarize_study(config, variant_name, root, ref, params_file, track=track,
                             seconds=time.perf_counter() - started)
    applied = apply_best(config, variant_name, root, report, params_file) if apply else False
    return {**report, "orphans": list(ref.orphans), "added": added, "applied": applied}


def apply_best(config: PipelineConfig, variant_name: str, root: str | Path, report: dict[str, Any],
               params_file: str | Path) -> bool:
    """Write the best trial's settings into `params_file` (as `dvc exp run -S` would) and check that the
    variant now resolves to the best trial's settings.

    Returns:
        Whether anything was written (not when there is no best trial or it changes nothing).
    """
    from pipeline.params_file import apply_settings

    best = report.get("best")
    if not best or not best["settings"]:
        return False
    apply_settings(params_file, best["settings"])
    tuned = load_params(params_file).variant(variant_name)
    expected = variant_for_trial_of(config, variant_name, best["params"], root)
    if tuned.params_hash() != expected.params_hash():  # a mapping bug must not go unnoticed
        raise ParamsError(f"{params_file}: after applying, models.{variant_name} does not resolve to the best "
                          f"trial's settings; check the file (the applied keys: {best['settings']})")
    return True


def variant_for_trial_of(config: PipelineConfig, variant_name: str, params: dict[str, Any],
                         root: str | Path) -> Variant:
    """The variant a finished trial trained, rebuilt from its params."""
    import optuna

    base, space = search_space(config, variant_name)
    data = load_tuning_data(root)
    return variant_for_trial(optuna.trial.FixedTrial(params), base, space, data.input_shape, data.num_classes)
