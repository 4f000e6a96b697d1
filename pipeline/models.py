"""The model factory: a variant's layer list -> a Functional `keras.Model` (Keras only; the layer types,
their shapes and parameter counts are in `pipeline/layers.py`).

The variant's layers are the body; the factory always adds the classifier head
`Dense(num_classes, softmax)`, so the class count comes from the data, never from the YAML.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pipeline.layers import Layer, Shape, check_model_size

if TYPE_CHECKING:
    import keras

    from pipeline.config import AugmentConfig

AUGMENT_PREFIX = "augment_"  # the names of the augmentation layers build_model adds


def build_model(
    layers: Sequence[Layer],
    input_shape: Shape,
    num_classes: int,
    name: str = "cnn",
    augment: AugmentConfig | None = None,
    seed: int = 0,
) -> keras.Model:
    """Build a Functional Keras model from a variant's layer list.

    Args:
        layers: the variant body from params.yaml.
        input_shape: (height, width, channels) of the prepared images.
        num_classes: number of classes; the head is Dense(num_classes, softmax).
        name: model name (the variant name).
        augment: random shift/rotation/zoom applied only while training (no parameters).
        seed: seed of the augmentation layers.

    Returns:
        An uncompiled `keras.Model`.
    """
    import keras

    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    check_model_size(layers, input_shape, num_classes)  # before Keras allocates any weight
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    outputs = inputs
    # Augmentation layers are identity at inference, so the saved model serves raw images.
    if augment is not None and augment.rotation > 0:
        outputs = keras.layers.RandomRotation(augment.rotation, fill_mode="constant", seed=seed,
                                              name=f"{AUGMENT_PREFIX}rotation")(outputs)
    if augment is not None and augment.translation > 0:
        outputs = keras.layers.RandomTranslation(augment.translation, augment.translation,
                                                 fill_mode="constant", seed=seed + 1,
                                                 name=f"{AUGMENT_PREFIX}translation")(outputs)
    if augment is not None and augment.zoom > 0:
        outputs = keras.layers.RandomZoom(augment.zoom, fill_mode="constant", seed=seed + 2,
                                          name=f"{AUGMENT_PREFIX}zoom")(outputs)
    for index, layer in enumerate(layers):
        outputs = layer.keras_layer(name=f"{layer.type}_{index}")(outputs)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(outputs)
    return keras.Model(inputs, outputs, name=name)


def augmentation_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The random augmentation layers `build_model` put in front of the body, in order."""
    return [layer for layer in model.layers if layer.name.startswith(AUGMENT_PREFIX)]


def conv_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The Conv2D layers, in order (filter, feature-map and class-activation pictures)."""
    import keras

    return [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
