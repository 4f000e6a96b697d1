"""Grad-CAM's contract on untrained models built from YAML variants (shape, range, layer, errors)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import AugmentConfig, load_params, parse_params
from pipeline.gradcam import class_activation_maps, feature_layer
from pipeline.models import build_model
from tests.conftest import REPO

AUGMENT = AugmentConfig(rotation=0.1, translation=0.1, zoom=0.1)


def variant_model(name: str, augment: AugmentConfig | None = None):
    config = load_params(REPO / "params.yaml")
    return build_model(config.variant(name).layers, (28, 28, 1), 10, name=name, augment=augment)


def yaml_model(layers: list[dict], name: str):
    return build_model(parse_params({"models": {name: {"layers": layers}}}).variant(name).layers, (28, 28, 1), 10,
                       name=name)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 1, (6, 28, 28, 1)).astype(np.float32)


@pytest.mark.parametrize("variant", ["three_conv", "relu_layers", "same_dropout_dense1000"])
def test_one_map_per_image_in_zero_one(variant: str, images: np.ndarray) -> None:
    heat = class_activation_maps(variant_model(variant, AUGMENT), images)
    assert heat.shape == (6, 28, 28) and heat.dtype == np.float32
    assert heat.min() >= 0 and heat.max() <= 1
    peaks = heat.max(axis=(1, 2))
    assert np.all(np.isclose(peaks, 1) | (peaks == 0))  # each map scaled to its own maximum
    assert np.isclose(peaks, 1).any()


def test_augmentation_is_off_and_classes_default_to_the_prediction(images: np.ndarray) -> None:
    model = variant_model("relu_layers", AUGMENT)
    first = class_activation_maps(model, images)
    np.testing.assert_array_equal(class_activation_maps(model, images), first)  # random layers would differ
    predicted = model.predict(images, verbose=0).argmax(axis=1)
    np.testing.assert_allclose(class_activation_maps(model, images, predicted), first, atol=1e-6)
    other = (predicted + 1) % 10
    assert not np.allclose(class_activation_maps(model, images, other), first)


def test_feature_layer_is_the_last_convolution_as_the_next_layer_sees_it() -> None:
    assert feature_layer(variant_model("three_conv")).name == "conv_4"  # relu inside the Conv2D
    assert feature_layer(variant_model("relu_layers")).name == "activation_4"  # Conv2D, then its ReLU
    normalised = yaml_model([{"type": "conv", "filters": 4, "kernel_size": 3}, {"type": "batch_norm"},
                             {"type": "activation", "activation": "relu"}, {"type": "pool"},
                             {"type": "global_pool"}], "bn")
    assert feature_layer(normalised).name == "activation_2"


def test_batch_norm_variant_and_an_empty_batch(images: np.ndarray) -> None:
    model = yaml_model([{"type": "conv", "filters": 4, "kernel_size": 3}, {"type": "batch_norm"},
                        {"type": "activation", "activation": "relu"}, {"type": "global_pool"}], "bn")
    assert class_activation_maps(model, images).shape == (6, 28, 28)
    assert class_activation_maps(model, images[:0]).shape == (0, 28, 28)


def test_bad_arguments_name_what_was_expected(images: np.ndarray) -> None:
    dense_only = yaml_model([{"type": "flatten"}, {"type": "dense", "units": 8}], "dense_only")
    with pytest.raises(ValueError, match="no Conv2D layer"):
        class_activation_maps(dense_only, images)
    model = variant_model("three_conv")
    with pytest.raises(ValueError, match=r"images must be shaped \(N, \*\(28, 28, 1\)\)"):
        class_activation_maps(model, images[..., 0])
    with pytest.raises(ValueError, match=r"classes must be shaped \(6,\) with values in \[0, 10\)"):
        class_activation_maps(model, images, np.full(6, 10))
    with pytest.raises(ValueError, match=r"classes must be shaped \(6,\)"):
        class_activation_maps(model, images, np.zeros(5, dtype=int))
