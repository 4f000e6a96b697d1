"""The search space of `python -m pipeline tune`: validated with params.yaml (a bad range or an unknown key
fails before any trial, naming the key), and turned into a trial's variant and back into settings."""

from __future__ import annotations

import copy

import optuna
import pytest

from pipeline.config import load_params, parse_params, read_params_file
from pipeline.study import masked, sampler_seed
from pipeline.trial import InvalidTrialError, variant_for_trial
from pipeline.tune import tuned_settings
from tests.conftest import REPO
from tests.unit.test_config import error_for

RAW = read_params_file(REPO / "params.yaml")


def _with_space(variant: str, space: dict) -> dict:
    raw = copy.deepcopy(RAW)
    raw["models"][variant]["tune"] = space
    return raw


def test_the_shipped_search_spaces_are_valid() -> None:
    config = load_params(REPO / "params.yaml")
    assert all(variant.tune is not None for variant in config.models.values())
    assert config.models["three_conv"].tune.learning_rate.log


@pytest.mark.parametrize(("space", "key", "words"), [
    ({"learning_rate": {"low": 0.01, "high": 0.001}}, "models.three_conv.tune.learning_rate", "must be below"),
    ({"learning_rate": {"low": 0.0, "high": 0.01, "log": True}}, "models.three_conv.tune.learning_rate",
     "log: true needs low above 0"),
    ({"learning_rate": {"low": 0.001, "high": 3.0}}, "models.three_conv.tune.learning_rate", "must lie within"),
    ({"rotation": {"low": 0.0, "high": 0.9}}, "models.three_conv.tune.rotation", "must lie within"),
    ({"epochs": {"low": 0, "high": 5}}, "models.three_conv.tune.epochs", "must lie within"),
    ({"batch_size": [64, 64]}, "models.three_conv.tune.batch_size", "choices repeat"),
    ({"batch_size": []}, "models.three_conv.tune.batch_size", "at least 1 item"),
    ({"momentum": {"low": 0.1, "high": 0.9}}, "models.three_conv.tune.momentum", "unknown key"),
    ({"learning_rate": {"low": 0.001, "high": 0.01, "scale": "log"}}, "models.three_conv.tune.learning_rate.scale",
     "unknown key"),
    ({"optimizer": ["adam", "lion"]}, "models.three_conv.tune.optimizer[1]", "Input should be"),
    ({}, "models.three_conv.tune", "an empty search space"),
    ({"dropout": {"low": 0.1, "high": 0.5}}, "models.three_conv.tune.dropout", "has no dropout layer"),
])
def test_a_bad_search_space_fails_naming_the_key(space: dict, key: str, words: str) -> None:
    message = error_for(_with_space("three_conv", space))
    assert key in message and words in message, message


def test_study_settings_are_validated() -> None:
    raw = copy.deepcopy(RAW)
    raw["tune"]["warmup_epochs"] = -1
    assert "tune.warmup_epochs" in error_for(raw)


def _space_and_base(variant: str, space: dict):
    config = parse_params(_with_space(variant, space))
    return config.variant(variant), config.models[variant].tune


def test_a_trial_changes_exactly_the_drawn_settings() -> None:
    base, space = _space_and_base("fashion_dropout", {
        "learning_rate": {"low": 0.0005, "high": 0.01, "log": True}, "filters_scale": [0.5, 2.0],
        "units_scale": [0.5, 1.0], "dropout": {"low": 0.1, "high": 0.6}, "rotation": {"low": 0.0, "high": 0.1}})
    drawn = {"learning_rate": 0.004, "filters_scale": 2.0, "units_scale": 0.5, "dropout_4": 0.2, "dropout_6": 0.45,
             "rotation": 0.05}
    tuned = variant_for_trial(optuna.trial.FixedTrial(drawn), base, space, (28, 28, 1), 10)
    assert tuned.train.learning_rate == 0.004 and tuned.seed == base.seed and tuned.name == base.name
    assert [layer.filters for layer in tuned.layers if layer.type == "conv"] == [64, 128]
    assert [layer.units for layer in tuned.layers if layer.type == "dense"] == [50]
    assert [layer.rate for layer in tuned.layers if layer.type == "dropout"] == [0.2, 0.45]
    # The variant's own augment block (all zeros) with the drawn rotation; the other strengths kept.
    assert tuned.train.augment.model_dump() == {"rotation": 0.05, "translation": 0.0, "zoom": 0.0}
    assert tuned_settings(base, tuned) == {
        "models.fashion_dropout.train.learning_rate": 0.004,
        "models.fashion_dropout.train.augment.rotation": 0.05,
        "models.fashion_dropout.train.augment.translation": 0.0,
        "models.fashion_dropout.train.augment.zoom": 0.0,
        "models.fashion_dropout.layers.0.filters": 64, "models.fashion_dropout.layers.1.filters": 128,
        "models.fashion_dropout.layers.4.rate": 0.2, "models.fashion_dropout.layers.5.units": 50,
        "models.fashion_dropout.layers.6.rate": 0.45,
    }


def test_a_drawn_model_that_cannot_be_built_is_refused_naming_the_layer() -> None:
    base, space = _space_and_base("three_conv", {"kernel_size": [3, 7]})
    with pytest.raises(InvalidTrialError, match=r"models\.three_conv\.layers\[4\] \(conv\): kernel_size \(7, 7\) is "
                                                r"larger than its 2x2 feature map"):
        variant_for_trial(optuna.trial.FixedTrial({"kernel_size": 7}), base, space, (28, 28, 1), 10)
    tuned = variant_for_trial(optuna.trial.FixedTrial({"kernel_size": 3}), base, space, (28, 28, 1), 10)
    assert tuned_settings(base, tuned) == {}  # 3 is what the variant has


def test_sampler_seeds_differ_per_worker_and_rerun_and_repeat_otherwise() -> None:
    seeds = {sampler_seed(42, worker, done) for worker in range(3) for done in (0, 5)}
    assert len(seeds) == 6
    assert sampler_seed(42, 0, 0) == sampler_seed(42, 0, 0) != sampler_seed(43, 0, 0)


def test_storage_urls_are_shown_without_their_password() -> None:
    shown = masked("postgresql://tuner:s3cret%40x@db.example:5432/studies")
    assert "s3cret" not in shown and shown == "postgresql://tuner:***@db.example:5432/studies"
