"""params.yaml validation: every bad value fails before any work, naming the key."""

from __future__ import annotations

import copy

import pytest
import yaml

from pipeline.config import ParamsError, apply_overrides, load_params, parse_params
from tests.conftest import REPO


@pytest.fixture
def raw() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def error_for(raw: dict) -> str:
    with pytest.raises(ParamsError) as caught:
        parse_params(raw)
    return str(caught.value)


def test_shipped_params_are_valid() -> None:
    config = load_params(REPO / "params.yaml")
    assert set(config.models) == {"swish_nopool", "relu_layers", "same_dropout_dense1000", "three_conv",
                                  "fashion_dropout"}
    assert config.data.source == "bundled"
    assert config.registration.model_name == "mnist-cnn"


def test_unknown_source_names_key_and_allowed_values(raw: dict) -> None:
    raw["data"]["source"] = "s3"
    message = error_for(raw)
    assert "data.source" in message
    assert all(name in message for name in ("'bundled'", "'keras'", "'idx'", "'csv'", "'folder'"))
    assert "'s3'" in message


def test_negative_split_fraction(raw: dict) -> None:
    raw["prepare"]["val_fraction"] = -0.1
    message = error_for(raw)
    assert "prepare.val_fraction" in message and "greater than 0" in message


def test_misspelled_key(raw: dict) -> None:
    raw["train"]["epoch"] = 3
    assert "train.epoch: unknown key" in error_for(raw)


def test_wrong_type(raw: dict) -> None:
    raw["train"]["batch_size"] = "large"
    assert "train.batch_size" in error_for(raw)


def test_zero_filters_names_the_layer(raw: dict) -> None:
    raw["models"]["three_conv"]["layers"][0]["filters"] = 0
    assert "models.three_conv.layers[0].filters" in error_for(raw)


def test_unknown_layer_type(raw: dict) -> None:
    raw["models"]["three_conv"]["layers"][1] = {"type": "lstm", "units": 3}
    message = error_for(raw)
    assert "models.three_conv.layers[1]" in message and "lstm" in message


def test_kernel_larger_than_feature_map(raw: dict) -> None:
    # After two 2x2 poolings the map is 5x5: a 7x7 valid kernel cannot fit.
    raw["models"]["three_conv"]["layers"][4]["kernel_size"] = 7
    message = error_for(raw)
    assert "models.three_conv.layers[4]" in message and "larger than its 5x5 feature map" in message


def test_variant_name_dvc_cannot_use(raw: dict) -> None:
    raw["models"]["bad@name"] = copy.deepcopy(raw["models"]["three_conv"])
    message = error_for(raw)
    assert "bad@name" in message and "DVC stage name" in message


def test_local_sources_need_a_path(raw: dict) -> None:
    raw["data"]["source"] = "idx"
    assert "data.path is required" in error_for(raw)


def test_per_variant_overrides_merge_with_defaults() -> None:
    config = load_params(REPO / "params.yaml")
    assert config.variant("three_conv").train.optimizer == "rmsprop"
    assert config.variant("three_conv").train.batch_size == config.train.batch_size
    assert config.variant("relu_layers").train.optimizer == config.train.optimizer


def test_dotted_overrides(raw: dict) -> None:
    merged = apply_overrides(raw, {"train.epochs": 1, "models.three_conv.train.learning_rate": 0.01})
    config = parse_params(merged)
    assert config.train.epochs == 1
    assert config.variant("three_conv").train.learning_rate == 0.01
    assert raw["train"]["epochs"] != 1  # the input is not modified


def test_a_variant_is_resolved_once_with_its_settings(raw: dict) -> None:
    variant = parse_params(raw).variant("three_conv")
    assert variant.name == "three_conv" and variant.seed == raw["seed"]
    assert variant.train.optimizer == "rmsprop" and len(variant.layers) == len(raw["models"]["three_conv"]["layers"])
    assert variant.with_seed(7).seed == 7 and variant.with_seed(7).train == variant.train


def test_params_hash_follows_what_decides_the_training_only(raw: dict) -> None:
    first = parse_params(raw).variant("three_conv").params_hash()
    raw["evaluate"]["gallery_rows"] = 3  # another stage's setting: the same training
    raw["models"]["relu_layers"]["train"]["epochs"] = 2  # another variant
    assert parse_params(raw).variant("three_conv").params_hash() == first
    raw["models"]["three_conv"]["train"]["batch_size"] = 16
    assert parse_params(raw).variant("three_conv").params_hash() != first
    assert parse_params(raw).variant("three_conv").fingerprint("a") != parse_params(raw).variant(
        "three_conv").fingerprint("b")


def test_config_is_frozen() -> None:
    config = load_params(REPO / "params.yaml")
    with pytest.raises(ValueError):
        config.seed = 1  # type: ignore[misc]


def test_a_key_given_twice_is_refused_naming_both_lines(tmp_path) -> None:
    """Issue 17 #5: DVC refuses `seed: 42` then `seed: 7`; PyYAML would silently take 7."""
    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text() + "\nseed: 7\n")
    first = 1 + next(number for number, line in enumerate((REPO / "params.yaml").read_text().splitlines())
                     if line.startswith("seed:"))
    last = len(path.read_text().splitlines())
    with pytest.raises(ParamsError) as caught:
        load_params(path)
    assert str(caught.value) == (f"{path} is not valid YAML: duplicate key 'seed': first on line {first}, "
                                 f"again on line {last}")


def test_a_nested_duplicate_is_refused_too(tmp_path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epochs: 3\n  batch_size: 8\n  epochs: 4\n")
    with pytest.raises(ParamsError, match="duplicate key 'epochs': first on line 2, again on line 4"):
        load_params(path)
