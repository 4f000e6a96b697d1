"""`tune --apply` writes params.yaml as `dvc exp run -S` would: the same file as DVC's own `-S` code
(`dvc.utils.hydra.apply_overrides`, what `dvc exp run -S` calls), only the applied lines changed."""

from __future__ import annotations

import difflib
import itertools
import shlex
import shutil
from pathlib import Path

import pytest
from dvc.utils.hydra import apply_overrides

from pipeline.config import load_params, read_params_file
from pipeline.errors import ParamsError
from pipeline.params_file import apply_settings, set_param_command
from tests.conftest import REPO

SETTINGS = {
    "models.relu_layers.train.epochs": 12,  # an existing key in a block mapping
    "models.three_conv.train.learning_rate": 0.0031234,  # a new key in a flow mapping
    "models.three_conv.train.augment.rotation": 0.05,  # a new block under it
    "models.three_conv.train.augment.translation": 0.1,
    "models.three_conv.train.augment.zoom": 0.0,
    "models.three_conv.layers.0.filters": 64,  # a list item
    "models.swish_nopool.train.optimizer": "adam",
}


def _changed_lines(before: str, after: str) -> list[str]:
    return [line for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
            if line[:1] in "+-" and not line.startswith(("+++", "---"))]


def test_apply_gives_the_file_dvc_exp_run_set_gives(tmp_path: Path) -> None:
    ours, dvcs = tmp_path / "ours.yaml", tmp_path / "dvc.yaml"
    shutil.copy(REPO / "params.yaml", ours)
    shutil.copy(REPO / "params.yaml", dvcs)
    command = set_param_command(SETTINGS, read_params_file(ours))
    assert "-S +models.three_conv.train.learning_rate=0.0031234" in command
    assert "-S models.relu_layers.train.epochs=12" in command
    apply_settings(ours, SETTINGS)
    arguments = shlex.split(command)
    apply_overrides(dvcs, [value for flag, value in itertools.pairwise(arguments) if flag == "-S"])
    assert ours.read_text() == dvcs.read_text()

    original = (REPO / "params.yaml").read_text()
    shipped_epochs = read_params_file(REPO / "params.yaml")["models"]["relu_layers"]["train"]["epochs"]
    # Only the applied lines; a new flow mapping is wrapped at ruamel's 80 columns, as DVC writes it too.
    assert _changed_lines(original, ours.read_text()) == [
        "-      optimizer: rmsprop", "+      optimizer: adam",
        f"-      epochs: {shipped_epochs}", "+      epochs: 12",
        "-      filters: 32", "+      filters: 64",
        "-    train: {optimizer: rmsprop}",
        "+    train: {optimizer: rmsprop, learning_rate: 0.0031234, augment: {rotation: ",
        "+          0.05, translation: 0.1, zoom: 0.0}}",
    ]
    config = load_params(ours)
    assert config.variant("three_conv").train.learning_rate == 0.0031234
    assert config.variant("three_conv").layers[0].filters == 64
    assert config.variant("swish_nopool").train.optimizer == "adam"
    # Comments stay, and a later -S of another key changes one line only.
    assert "# seed 003: 93,322 parameters" in ours.read_text()
    before = ours.read_text()
    apply_overrides(ours, ["seed=7"])
    assert _changed_lines(before, ours.read_text()) == ["-seed: 42", "+seed: 7"]


def test_a_setting_that_makes_params_invalid_is_refused_and_the_file_kept(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", path)
    before = path.read_text()
    with pytest.raises(ParamsError, match=r"models\.three_conv\.layers\[4\]"):
        apply_settings(path, {"models.three_conv.layers.4.kernel_size": 7})
    with pytest.raises(ParamsError, match=r"cannot set models\.three_conv\.layers\.40\.filters"):
        apply_settings(path, {"models.three_conv.layers.40.filters": 7})
    assert path.read_text() == before
