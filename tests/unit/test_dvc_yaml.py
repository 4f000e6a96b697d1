"""dvc.yaml tells the truth: each stage depends on every project file its command runs, its outs are
the paths pipeline/layout.py names, and the committed dvc.lock describes the committed code."""

from __future__ import annotations

import yaml

from pipeline.config import load_params
from pipeline.layout import Layout
from pipeline.lineage import file_md5
from tests.conftest import REPO
from tests.stage_imports import command_files, stage_code_deps

DVC_YAML = yaml.safe_load((REPO / "dvc.yaml").read_text())


def _definition(stage: str) -> dict:
    definition = DVC_YAML["stages"][stage]
    return definition.get("do", definition)


def _paths(entries: list) -> list[str]:
    return [entry if isinstance(entry, str) else next(iter(entry)) for entry in entries]


def test_each_stage_depends_on_exactly_the_project_files_it_imports() -> None:
    for stage, needed in stage_code_deps().items():
        listed = sorted(path for path in _paths(_definition(stage)["deps"]) if path.startswith(("pipeline/", "flows/")))
        assert listed == needed, (f"dvc.yaml stage {stage}: missing {sorted(set(needed) - set(listed))}, "
                                  f"not imported {sorted(set(listed) - set(needed))} (python -m tests.stage_imports)")


def test_the_import_closure_follows_function_level_imports() -> None:
    """The closure is computed, not listed: register imports compare inside a function, and compare's
    ranking rule must therefore be a dependency of the register stage."""
    register = {path.name for path in command_files("register")}
    assert {"compare.py", "model_card.py", "tracking.py", "lineage.py", "layout.py", "config.py"} <= register
    assert "plots.py" in register  # imported inside register.disagreement_picture
    assert "train.py" not in register and "tune.py" not in register  # what it does not run
    assert {path.name for path in command_files("compare")} >= {"compare.py", "metrics.py", "io.py"}


def test_outs_are_the_paths_of_layout() -> None:
    layout = Layout(REPO)
    variants = list(load_params(REPO / "params.yaml").models)
    expected = {stage: sorted(str(path.relative_to(REPO)) for path in paths)
                for stage, paths in layout.stage_outs(variants).items()}
    declared = {}
    for stage in DVC_YAML["stages"]:
        outs = _paths(_definition(stage).get("outs", []))
        if "${key}" in str(outs):
            declared.update({f"{stage}@{variant}": sorted(out.replace("${key}", variant) for out in outs)
                             for variant in variants})
        else:
            declared[stage] = sorted(outs)
    assert declared == expected


def test_committed_lock_describes_the_committed_code_and_params() -> None:
    """dvc.lock's recorded default run must come from the code that ships (run `dvc repro` and commit)."""
    lock = yaml.safe_load((REPO / "dvc.lock").read_text())
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    stale = []
    for stage, entry in lock["stages"].items():
        for dependency in entry.get("deps", []):
            path = REPO / dependency["path"]
            if path.suffix == ".py" and (not path.is_file() or file_md5(path) != dependency["md5"]):
                stale.append(f"{stage}: {dependency['path']}")
        for values in entry.get("params", {}).values():
            for key, value in values.items():
                node = params
                for part in key.split("."):
                    node = node[part]
                if node != value:
                    stale.append(f"{stage}: params {key}")
    assert not stale, f"dvc.lock is stale (run dvc repro and commit dvc.lock): {stale}"
    assert set(lock["stages"]) == {stage if stage != "train" else f"train@{variant}"
                                   for stage in DVC_YAML["stages"]
                                   for variant in (params["models"] if stage == "train" else [None])}


def test_stage_module_paths_exist() -> None:
    for stage in DVC_YAML["stages"]:
        for path in _paths(_definition(stage)["deps"]):
            assert (REPO / path).exists() or not path.startswith("pipeline/"), (stage, path)


