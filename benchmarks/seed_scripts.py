"""The seed notebooks' way of training, as the bare baseline of the throughput benchmark.

Each architecture is written out with plain `keras.layers` (Sequential, as notebooks 000-004 do),
compiled with the optimizer's name and trained with NumPy arrays:
`model.fit(x, y, batch_size, epochs, validation_data)`. No tf.data, no callbacks, no seeding, no
op determinism, constant learning rate: what the pipeline's `fit_variant` is compared against.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

# The optimizer each variant uses in params.yaml (seed 000 used Keras' default, RMSprop; 003 RMSprop).
OPTIMIZERS = {"swish_nopool": "rmsprop", "relu_layers": "adam", "same_dropout_dense1000": "adam",
              "three_conv": "rmsprop", "fashion_dropout": "adam"}


def _swish_nopool(keras: Any, num_classes: int) -> list[Any]:  # seed 000
    layers = keras.layers
    return [layers.Conv2D(3, 5, activation="swish"), layers.Conv2D(6, 5, activation="swish"), layers.Flatten(),
            layers.Dense(84, activation="swish"), layers.Dense(num_classes, activation="softmax")]


def _relu_layers(keras: Any, num_classes: int) -> list[Any]:  # seed 001
    layers = keras.layers
    return [layers.Conv2D(32, 5), layers.ReLU(), layers.MaxPool2D(2), layers.Conv2D(64, 5), layers.ReLU(),
            layers.MaxPool2D(2), layers.Flatten(), layers.Dense(64), layers.ReLU(),
            layers.Dense(num_classes, activation="softmax")]


def _same_dropout_dense1000(keras: Any, num_classes: int) -> list[Any]:  # seed 002
    layers = keras.layers
    return [layers.Conv2D(32, 5, padding="same", activation="relu"), layers.MaxPool2D(2, strides=2),
            layers.Conv2D(64, 2, padding="same", activation="relu"), layers.MaxPool2D(2), layers.Dropout(0.25),
            layers.Flatten(), layers.Dense(1000, activation="relu"), layers.Dense(num_classes, activation="softmax")]


def _three_conv(keras: Any, num_classes: int) -> list[Any]:  # seed 003
    layers = keras.layers
    return [layers.Conv2D(32, 3, activation="relu"), layers.MaxPool2D(2), layers.Conv2D(64, 3, activation="relu"),
            layers.MaxPool2D(2), layers.Conv2D(64, 3, activation="relu"), layers.Flatten(),
            layers.Dense(64, activation="relu"), layers.Dense(num_classes, activation="softmax")]


def _fashion_dropout(keras: Any, num_classes: int) -> list[Any]:  # seed 004
    layers = keras.layers
    return [layers.Conv2D(32, 3, padding="same", activation="relu"), layers.Conv2D(64, 3, activation="relu"),
            layers.MaxPool2D(2), layers.Flatten(), layers.Dropout(0.5), layers.Dense(100, activation="relu"),
            layers.Dropout(0.3), layers.Dense(num_classes, activation="softmax")]


ARCHITECTURES: dict[str, Callable[[Any, int], list[Any]]] = {
    "swish_nopool": _swish_nopool, "relu_layers": _relu_layers, "same_dropout_dense1000": _same_dropout_dense1000,
    "three_conv": _three_conv, "fashion_dropout": _fashion_dropout,
}


def build_seed_model(variant: str, input_shape: tuple[int, ...], num_classes: int) -> Any:
    """The variant as the notebook wrote it: a Sequential stack of plain Keras layers, compiled."""
    import keras

    if variant not in ARCHITECTURES:
        raise ValueError(f"no seed script for variant {variant!r}; known: {', '.join(ARCHITECTURES)}")
    model = keras.Sequential([keras.Input(shape=input_shape), *ARCHITECTURES[variant](keras, num_classes)])
    model.compile(optimizer=OPTIMIZERS[variant], loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def fit_seed_script(variant: str, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray,
                    y_val: np.ndarray, num_classes: int, batch_size: int, epochs: int) -> Any:
    """Build and fit like the notebooks; return the model."""
    model = build_seed_model(variant, tuple(x_train.shape[1:]), num_classes)
    # verbose=2 (a line per epoch), as fit_variant uses under DVC where stdout is not a terminal.
    model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, validation_data=(x_val, y_val), verbose=2)
    return model
