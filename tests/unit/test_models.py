"""The model factory: the seed architectures' exact parameter counts, YAML-only variants."""

from __future__ import annotations

import pytest

from pipeline.config import load_params, parse_params
from pipeline.layers import infer_shapes
from pipeline.models import build_model
from tests.conftest import REPO

# Keras 3 totals on 28x28x1 input with 10 classes (../shared/SEEDS.md).
SEED_PARAMETER_COUNTS = {
    "swish_nopool": 203_068,
    "relu_layers": 118_346,
    "same_dropout_dense1000": 3_156_098,
    "three_conv": 93_322,
    "fashion_dropout": 1_101_526,
}


@pytest.mark.parametrize("variant", sorted(SEED_PARAMETER_COUNTS))
def test_seed_variant_parameter_counts(variant: str) -> None:
    config = load_params(REPO / "params.yaml")
    model = build_model(config.variant(variant).layers, (28, 28, 1), 10, name=variant)
    assert model.count_params() == SEED_PARAMETER_COUNTS[variant]


def test_three_conv_convolutional_part_alone() -> None:
    # Seed 003: the conv part has 55,744 parameters (before Flatten/Dense).
    config = load_params(REPO / "params.yaml")
    model = build_model(config.variant("three_conv").layers, (28, 28, 1), 10)
    conv_params = sum(layer.count_params() for layer in model.layers if layer.name.startswith("conv"))
    assert conv_params == 55_744


def test_head_follows_the_data_not_the_yaml() -> None:
    config = load_params(REPO / "params.yaml")
    model = build_model(config.variant("three_conv").layers, (32, 32, 3), 4)
    assert model.output_shape == (None, 4)
    assert model.input_shape == (None, 32, 32, 3)


def test_shape_inference_matches_keras() -> None:
    config = load_params(REPO / "params.yaml")
    for name, variant in config.models.items():
        model = build_model(variant.layers, (28, 28, 1), 10, name=name)
        keras_shapes = [tuple(layer.output.shape[1:]) for layer in model.layers[1:-1]]
        assert infer_shapes(variant.layers, (28, 28, 1)) == keras_shapes, name


def test_custom_yaml_variant_with_every_layer_type() -> None:
    raw = {
        "models": {"custom": {"layers": [
            {"type": "zero_padding", "padding": [[1, 0], [1, 0]]},
            {"type": "conv", "filters": 8, "kernel_size": 3, "strides": 2},
            {"type": "batch_norm"},
            {"type": "activation", "activation": "gelu"},
            {"type": "pool", "pool_size": 2, "mode": "average"},
            {"type": "dropout", "rate": 0.1},
            {"type": "global_pool", "mode": "max"},
            {"type": "dense", "units": 16, "activation": "relu"},
        ]}},
    }
    config = parse_params(raw)
    model = build_model(config.variant("custom").layers, (28, 28, 1), 10, name="custom")
    # ZeroPadding((1,0),(1,0)) makes 29x29 (seed 004); stride 2 conv -> 14x14; pool -> 7x7.
    assert model.get_layer("conv_1").output.shape[1:] == (14, 14, 8)
    assert model.output_shape == (None, 10)


def test_augmentation_adds_no_parameters() -> None:
    from pipeline.config import AugmentConfig

    config = load_params(REPO / "params.yaml")
    augmented = build_model(config.variant("three_conv").layers, (28, 28, 1), 10,
                            augment=AugmentConfig(rotation=0.05, translation=0.1, zoom=0.1))
    assert augmented.count_params() == SEED_PARAMETER_COUNTS["three_conv"]
    assert "augment_rotation" in [layer.name for layer in augmented.layers]


def test_vector_output_required() -> None:
    from pipeline.layers import ConvLayer

    with pytest.raises(ValueError, match="end the list with a flatten"):
        infer_shapes([ConvLayer(type="conv", filters=4, kernel_size=3)], (28, 28, 1))


def test_batch_norm_momentum_reaches_keras_and_is_validated() -> None:
    from tests.unit.test_config import error_for

    layers = [{"type": "conv", "filters": 4, "kernel_size": 3}, {"type": "batch_norm", "momentum": 0.9},
              {"type": "batch_norm"}, {"type": "flatten"}]
    config = parse_params({"models": {"bn": {"layers": layers}}})
    model = build_model(config.variant("bn").layers, (28, 28, 1), 10, name="bn")
    assert [model.get_layer(f"batch_norm_{index}").momentum for index in (1, 2)] == [0.9, 0.99]  # Keras' default
    layers[1]["momentum"] = 1.0
    assert "models.bn.layers[1].momentum" in error_for({"models": {"bn": {"layers": layers}}})
