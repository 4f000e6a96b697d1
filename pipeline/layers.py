"""Layer types of a variant's `layers:` list: each class owns its params, output shape, parameter count
and Keras constructor, so a new layer type is one class here (and a name in `LayerSpec`).

The shape and parameter arithmetic is plain Python, so params validation can reject a kernel larger
than its feature map without importing TensorFlow; `tests/unit/test_layers.py` keeps it equal to what
Keras builds. Keras is imported only inside `keras_layer`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    import keras

Shape = tuple[int, ...]
IntPair = int | tuple[int, int]
Activation = Literal["relu", "swish", "sigmoid", "tanh", "elu", "gelu", "softmax", "linear"]

# Sanity limits, checked when params.yaml is validated and again when a model is built. The largest
# seed variant has 3.2M parameters and its largest feature map holds 25,088 values; these bounds leave
# room for real images (1024x1024x3 is data's maximum) while refusing what cannot be trained on a
# workstation, instead of failing later with an out-of-memory error or an int32 overflow in TensorFlow.
# 50M float32 weights: 200 MB, about 800 MB with gradients and Adam's two moment slots.
MAX_MODEL_PARAMETERS = 50_000_000
# Values in one layer's output for one image (2**26 float32 = 256 MiB; the batch multiplies it).
MAX_FEATURE_MAP_VALUES = 2**26
# kernel_size, strides, pool_size and zero padding: no window or step beyond the largest image side.
MAX_WINDOW = 1024


def pair(value: IntPair) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (value[0], value[1])


def _window_output(size: int, window: int, stride: int, padding: str) -> int:
    # Seed 004: output = (in - kernel + 2*padding) / stride + 1; 'same' keeps ceil(in / stride).
    if padding == "same":
        return math.ceil(size / stride)
    return (size - window) // stride + 1


class Layer(BaseModel):
    """Base of the layer types: frozen, unknown keys refused (a typo names the key)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
    spatial_input: ClassVar[bool] = False  # needs an (H, W, C) input

    def output_shape(self, shape: Shape, key: str) -> Shape:
        return shape

    def parameter_count(self, incoming: Shape) -> int:
        return 0

    def keras_layer(self, name: str) -> keras.layers.Layer:
        raise NotImplementedError


class ConvLayer(Layer):
    type: Literal["conv"]
    filters: int = Field(ge=1)
    kernel_size: IntPair
    strides: IntPair = 1
    padding: Literal["valid", "same"] = "valid"
    activation: Activation | None = None
    spatial_input: ClassVar[bool] = True

    def output_shape(self, shape: Shape, key: str) -> Shape:
        kernel, strides = pair(self.kernel_size), pair(self.strides)
        if min(kernel + strides) < 1 or max(kernel + strides) > MAX_WINDOW:
            raise ValueError(f"{key}: kernel_size and strides must be between 1 and {MAX_WINDOW}, "
                             f"got {kernel} and {strides}")
        height, width = shape[0], shape[1]
        if self.padding == "valid" and (kernel[0] > height or kernel[1] > width):
            raise ValueError(f"{key}: kernel_size {kernel} is larger than its {height}x{width} feature map; "
                             "use a smaller kernel, padding: same, or fewer pooling layers before it")
        return (_window_output(height, kernel[0], strides[0], self.padding),
                _window_output(width, kernel[1], strides[1], self.padding), self.filters)

    def parameter_count(self, incoming: Shape) -> int:
        kernel = pair(self.kernel_size)
        return (kernel[0] * kernel[1] * incoming[-1] + 1) * self.filters

    def keras_layer(self, name: str) -> keras.layers.Layer:
        import keras

        return keras.layers.Conv2D(self.filters, pair(self.kernel_size), strides=pair(self.strides),
                                   padding=self.padding, activation=self.activation, name=name)


class PoolLayer(Layer):
    type: Literal["pool"]
    pool_size: IntPair = 2
    strides: IntPair | None = None
    mode: Literal["max", "average"] = "max"
    spatial_input: ClassVar[bool] = True

    def output_shape(self, shape: Shape, key: str) -> Shape:
        pool = pair(self.pool_size)
        strides = pair(self.strides) if self.strides is not None else pool
        if min(pool + strides) < 1 or max(pool + strides) > MAX_WINDOW:
            raise ValueError(f"{key}: pool_size and strides must be between 1 and {MAX_WINDOW}, "
                             f"got {pool} and {strides}")
        if pool[0] > shape[0] or pool[1] > shape[1]:
            raise ValueError(f"{key}: pool_size {pool} is larger than its {shape[0]}x{shape[1]} feature map")
        return (_window_output(shape[0], pool[0], strides[0], "valid"),
                _window_output(shape[1], pool[1], strides[1], "valid"), shape[2])

    def keras_layer(self, name: str) -> keras.layers.Layer:
        import keras

        pool_class = keras.layers.MaxPooling2D if self.mode == "max" else keras.layers.AveragePooling2D
        strides = pair(self.strides) if self.strides is not None else None
        return pool_class(pair(self.pool_size), strides=strides, name=name)


class DropoutLayer(Layer):
    type: Literal["dropout"]
    rate: float = Field(ge=0, lt=1)

    def keras_layer(self, name: str) -> keras.layers.Layer:
        import keras

        return keras.layers.Dropout(self.rate, name=name)


class FlattenLayer(Layer):
    type: Literal["flatten"]

    def output_shape(self, shape: Shape, key: str) -> Shape:
        return (math.prod(shape),)

    def keras_layer(self, name: str) -> keras.layers.Layer:
        import keras

        return keras.layers.Flatten(name=name)


class GlobalPoolLayer(Layer):
    type: Literal["global_pool"]
    mode: Literal["max", "average"] = "average"
    spatial_input: ClassVar[bool] = True

    def output_shape(self, shape: Shape, key: str) -> Shape:
        return (shape[2],)

    def keras_layer(self, name: str) -> keras.layers.Layer:
        import keras

        if self.mode == "max":
            return keras.layers.GlobalMaxPooling2D(name=name)
        return keras.layers.GlobalAveragePooling2D(name=name)


class DenseLayer(Layer):
    type: Literal["dense"]
    units: int = Field(ge=1)
    activation: Activation | None = None

    def output_shape(self, shape: Shape, key: str) -> Shape:
        return (*shape[:-1], self.units)

    def parameter_count(self, incoming: Shape) -> int:
        return (incoming[-1] + 1) * self.units

    def keras_layer(self, name: str) -> keras.layers.Layer:
        import keras

        return keras.layers.Dense(self.units, activation=self.activation, name=name)


class ActivationLayer(Layer):
    type: Literal["activation"]
    activation: Activation

    def keras_layer(self, name: str) -> keras.layers.Layer:
        import keras

        return keras.layers.Activation(self.activation, name=name)


class ZeroPaddingLayer(Layer):
    type: Literal["zero_padding"]
    # 1 -> one pixel on every side; ((top, bottom), (left, right)) as in seed 004.
    padding: int | tuple[tuple[int, int], tuple[int, int]] = 1
    spatial_input: ClassVar[bool] = True

    def sides(self) -> tuple[int, int, int, int]:
        if isinstance(self.padding, int):
            return (self.padding,) * 4
        (top, bottom), (left, right) = self.padding
        return top, bottom, left, right

    def output_shape(self, shape: Shape, key: str) -> Shape:
        top, bottom, left, right = self.sides()
        if min(top, bottom, left, right) < 0 or max(top, bottom, left, right) > MAX_WINDOW:
            raise ValueError(f"{key}: padding must be between 0 and {MAX_WINDOW}")
        return (shape[0] + top + bottom, shape[1] + left + right, shape[2])

    def keras_layer(self, name: str) -> keras.layers.Layer:
        import keras

        return keras.layers.ZeroPadding2D(self.padding, name=name)


class BatchNormLayer(Layer):
    type: Literal["batch_norm"]
    # Weight of the old value in the moving mean and variance the model predicts with. Keras' 0.99
    # needs several hundred steps to forget its initial values; the bundled sample's 28 steps per
    # epoch want about 0.9, or the validation accuracy of the first epochs is that of noise.
    momentum: float = Field(0.99, gt=0, lt=1)

    def parameter_count(self, incoming: Shape) -> int:
        return 4 * incoming[-1]  # gamma, beta, moving mean, moving variance

    def keras_layer(self, name: str) -> keras.layers.Layer:
        import keras

        return keras.layers.BatchNormalization(momentum=self.momentum, name=name)


LAYER_TYPES = (ConvLayer, PoolLayer, DropoutLayer, FlattenLayer, GlobalPoolLayer, DenseLayer,
               ActivationLayer, ZeroPaddingLayer, BatchNormLayer)
LAYER_TYPE_NAMES = tuple(layer_type.model_fields["type"].annotation.__args__[0] for layer_type in LAYER_TYPES)
LayerSpec = Annotated[
    ConvLayer | PoolLayer | DropoutLayer | FlattenLayer | GlobalPoolLayer | DenseLayer
    | ActivationLayer | ZeroPaddingLayer | BatchNormLayer,
    Field(discriminator="type"),
]


def infer_shapes(layers: Sequence[Layer], input_shape: Shape, where: str = "layers") -> list[Shape]:
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
        if layer.spatial_input and len(shape) != 3:
            raise ValueError(f"{key}: needs an image-shaped input but gets {shape} (after a flatten?)")
        shape = layer.output_shape(shape, key)
        if math.prod(shape) > MAX_FEATURE_MAP_VALUES:
            raise ValueError(f"{key}: outputs {shape}, {math.prod(shape):,} values per image, more than the "
                             f"limit of {MAX_FEATURE_MAP_VALUES:,}; use fewer filters/units or downsample first")
        shapes.append(shape)
    if len(shape) != 1:
        raise ValueError(f"{where}: the last layer outputs {shape}; end the list with a flatten or global_pool "
                         "(and optional dense layers) so the classifier head gets a vector")
    return shapes


def count_parameters(layers: Sequence[Layer], input_shape: Shape, num_classes: int) -> int:
    """The parameter count Keras will report (`model.count_params()`), without building the model.

    Args:
        layers: the variant's layer list.
        input_shape: (height, width, channels) of one image.
        num_classes: size of the classifier head Dense(num_classes).

    Returns:
        Every layer's weights plus the head's.
    """
    shapes = infer_shapes(layers, input_shape)
    incoming_shapes = [tuple(input_shape), *shapes[:-1]]
    body = sum(layer.parameter_count(incoming) for layer, incoming in zip(layers, incoming_shapes, strict=True))
    return body + (shapes[-1][-1] + 1) * num_classes


def check_model_size(layers: Sequence[Layer], input_shape: Shape, num_classes: int, where: str = "layers") -> int:
    """Raise ValueError naming `where` when the model would exceed MAX_MODEL_PARAMETERS; return the count."""
    count = count_parameters(layers, input_shape, num_classes)
    if count > MAX_MODEL_PARAMETERS:
        raise ValueError(
            f"{where}: {count:,} parameters with {num_classes} classes on {tuple(input_shape)} images, more "
            f"than the limit of {MAX_MODEL_PARAMETERS:,}; use fewer units/filters or pool before the flatten")
    return count
