"""Architecture variants: a layer list from params.yaml -> a Functional `keras.Model`.

The variant's layers are the body; the factory always adds the classifier head
`Dense(num_classes, softmax)`, so the class count comes from the data, never from the YAML.
`infer_shapes` walks the same list in plain Python so that params validation can reject
a kernel larger than its feature map without importing TensorFlow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pipeline.config import (
    ActivationLayer,
    BatchNormLayer,
    ConvLayer,
    DenseLayer,
    DropoutLayer,
    FlattenLayer,
    GlobalPoolLayer,
    PoolLayer,
    ZeroPaddingLayer,
)

if TYPE_CHECKING:
    import keras

    from pipeline.config import AugmentConfig, LayerSpec

Shape = tuple[int, ...]

# Sanity limits, checked when params.yaml is validated (before any data is read) and again by
# `build_model`. The largest seed variant has 3.2M parameters and its largest feature map holds
# 25,088 values; these bounds leave room for real images (1024x1024x3 is data's maximum) while
# refusing what cannot be trained on a workstation instead of failing later with an out-of-memory
# error or an int32 overflow inside TensorFlow.
# 50M float32 weights: 200 MB, about 800 MB with gradients and Adam's two moment slots.
MAX_MODEL_PARAMETERS = 50_000_000
# Values in one layer's output for one image (2**26 float32 = 256 MiB; the batch multiplies it).
MAX_FEATURE_MAP_VALUES = 2**26
# kernel_size, strides, pool_size and zero padding: no window or step beyond the largest image side.
MAX_WINDOW = 1024


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (value[0], value[1])


def _window_output(size: int, window: int, stride: int, padding: str) -> int:
    # Seed 004: output = (in - kernel + 2*padding) / stride + 1; 'same' keeps ceil(in / stride).
    if padding == "same":
        return math.ceil(size / stride)
    return (size - window) // stride + 1


def infer_shapes(layers: Sequence[LayerSpec], input_shape: Shape, where: str = "layers") -> list[Shape]:
    """Output shape after each layer; raise ValueError naming the layer that cannot fit.

    Args:
        layers: the variant's layer list.
        input_shape: (height, width, channels) of one image.
        where: the params key of the list, used in error messages.

    Returns:
        One shape per layer (without the batch dimension).
    """
    shape: Shape = tuple(input_shape)
    shapes: list[Shape] = []
    for index, layer in enumerate(layers):
        key = f"{where}[{index}] ({layer.type})"
        spatial = len(shape) == 3
        if isinstance(layer, (ConvLayer, PoolLayer, ZeroPaddingLayer, GlobalPoolLayer)) and not spatial:
            raise ValueError(f"{key}: needs an image-shaped input but gets {shape} (after a flatten?)")
        if isinstance(layer, ConvLayer):
            kernel, strides = _pair(layer.kernel_size), _pair(layer.strides)
            if min(kernel + strides) < 1 or max(kernel + strides) > MAX_WINDOW:
                raise ValueError(f"{key}: kernel_size and strides must be between 1 and {MAX_WINDOW}, "
                                 f"got {kernel} and {strides}")
            height, width = shape[0], shape[1]
            if layer.padding == "valid" and (kernel[0] > height or kernel[1] > width):
                raise ValueError(
                    f"{key}: kernel_size {kernel} is larger than its {height}x{width} feature map; "
                    "use a smaller kernel, padding: same, or fewer pooling layers before it"
                )
            shape = (
                _window_output(height, kernel[0], strides[0], layer.padding),
                _window_output(width, kernel[1], strides[1], layer.padding),
                layer.filters,
            )
        elif isinstance(layer, PoolLayer):
            pool = _pair(layer.pool_size)
            strides = _pair(layer.strides) if layer.strides is not None else pool
            if min(pool + strides) < 1 or max(pool + strides) > MAX_WINDOW:
                raise ValueError(f"{key}: pool_size and strides must be between 1 and {MAX_WINDOW}, "
                                 f"got {pool} and {strides}")
            if pool[0] > shape[0] or pool[1] > shape[1]:
                raise ValueError(f"{key}: pool_size {pool} is larger than its {shape[0]}x{shape[1]} feature map")
            shape = (
                _window_output(shape[0], pool[0], strides[0], "valid"),
                _window_output(shape[1], pool[1], strides[1], "valid"),
                shape[2],
            )
        elif isinstance(layer, ZeroPaddingLayer):
            if isinstance(layer.padding, int):
                (top, bottom), (left, right) = (layer.padding,) * 2, (layer.padding,) * 2
            else:
                (top, bottom), (left, right) = layer.padding
            if min(top, bottom, left, right) < 0 or max(top, bottom, left, right) > MAX_WINDOW:
                raise ValueError(f"{key}: padding must be between 0 and {MAX_WINDOW}")
            shape = (shape[0] + top + bottom, shape[1] + left + right, shape[2])
        elif isinstance(layer, FlattenLayer):
            shape = (math.prod(shape),)
        elif isinstance(layer, GlobalPoolLayer):
            shape = (shape[2],)
        elif isinstance(layer, DenseLayer):
            shape = (*shape[:-1], layer.units)
        if math.prod(shape) > MAX_FEATURE_MAP_VALUES:
            raise ValueError(f"{key}: outputs {shape}, {math.prod(shape):,} values per image, more than the "
                             f"limit of {MAX_FEATURE_MAP_VALUES:,}; use fewer filters/units or downsample first")
        shapes.append(shape)
    if len(shape) != 1:
        raise ValueError(
            f"{where}: the last layer outputs {shape}; end the list with a flatten or global_pool "
            "(and optional dense layers) so the classifier head gets a vector"
        )
    return shapes


def count_parameters(layers: Sequence[LayerSpec], input_shape: Shape, num_classes: int) -> int:
    """The parameter count Keras will report (`model.count_params()`), without building the model.

    Args:
        layers: the variant's layer list (shape-checked by `infer_shapes`).
        input_shape: (height, width, channels) of one image.
        num_classes: size of the classifier head.

    Returns:
        Weights and biases of conv and dense layers, batch-norm statistics, and the head.
    """
    shapes = infer_shapes(layers, input_shape)
    total = 0
    for layer, incoming in zip(layers, [tuple(input_shape), *shapes[:-1]], strict=True):
        if isinstance(layer, ConvLayer):
            kernel = _pair(layer.kernel_size)
            total += (kernel[0] * kernel[1] * incoming[-1] + 1) * layer.filters
        elif isinstance(layer, DenseLayer):
            total += (incoming[-1] + 1) * layer.units
        elif isinstance(layer, BatchNormLayer):
            total += 4 * incoming[-1]  # gamma, beta, moving mean, moving variance
    return total + (shapes[-1][-1] + 1) * num_classes


def check_model_size(layers: Sequence[LayerSpec], input_shape: Shape, num_classes: int,
                     where: str = "layers") -> int:
    """Raise ValueError naming `where` when the model would exceed MAX_MODEL_PARAMETERS; return the count."""
    count = count_parameters(layers, input_shape, num_classes)
    if count > MAX_MODEL_PARAMETERS:
        raise ValueError(
            f"{where}: {count:,} parameters with {num_classes} classes on {tuple(input_shape)} images, more "
            f"than the limit of {MAX_MODEL_PARAMETERS:,}; use fewer units/filters or pool before the flatten"
        )
    return count


def _keras_layer(layer: LayerSpec, name: str) -> keras.layers.Layer:
    import keras

    if isinstance(layer, ConvLayer):
        return keras.layers.Conv2D(
            layer.filters, _pair(layer.kernel_size), strides=_pair(layer.strides),
            padding=layer.padding, activation=layer.activation, name=name,
        )
    if isinstance(layer, PoolLayer):
        pool_class = keras.layers.MaxPooling2D if layer.mode == "max" else keras.layers.AveragePooling2D
        strides = _pair(layer.strides) if layer.strides is not None else None
        return pool_class(_pair(layer.pool_size), strides=strides, name=name)
    if isinstance(layer, DropoutLayer):
        return keras.layers.Dropout(layer.rate, name=name)
    if isinstance(layer, FlattenLayer):
        return keras.layers.Flatten(name=name)
    if isinstance(layer, GlobalPoolLayer):
        if layer.mode == "max":
            return keras.layers.GlobalMaxPooling2D(name=name)
        return keras.layers.GlobalAveragePooling2D(name=name)
    if isinstance(layer, DenseLayer):
        return keras.layers.Dense(layer.units, activation=layer.activation, name=name)
    if isinstance(layer, ActivationLayer):
        return keras.layers.Activation(layer.activation, name=name)
    if isinstance(layer, ZeroPaddingLayer):
        return keras.layers.ZeroPadding2D(layer.padding, name=name)
    if isinstance(layer, BatchNormLayer):
        return keras.layers.BatchNormalization(name=name)
    raise ValueError(f"unknown layer type {layer.type!r}")  # unreachable: params validation


AUGMENT_PREFIX = "augment_"  # the names of the augmentation layers build_model adds


def augmentation_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The random augmentation layers `build_model` put in front of the body, in order."""
    return [layer for layer in model.layers if layer.name.startswith(AUGMENT_PREFIX)]


def build_model(
    layers: Sequence[LayerSpec],
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
        outputs = _keras_layer(layer, name=f"{layer.type}_{index}")(outputs)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(outputs)
    return keras.Model(inputs, outputs, name=name)


def conv_layer_names(model: keras.Model) -> list[str]:
    """Names of the Conv2D layers, in order (used for filter and feature-map pictures)."""
    import keras

    return [layer.name for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
