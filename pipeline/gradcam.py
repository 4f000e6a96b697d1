"""Grad-CAM (Selvaraju et al., 2017): where in an image the last convolution saw the predicted class.

A short `tf.GradientTape` function rather than a library, after trying the two candidates with this
project's models (Functional, with augmentation and BatchNormalization layers) on Keras 3.15.1 and
TensorFlow 2.21:
- tf-keras-vis 0.8.7 (its last release, March 2024) runs, and its maps, before upsampling and scaled
  the same way, agree with this function's to 1e-5 (it scales min to max; this function divides by
  the maximum, as keras-io's Grad-CAM example does); but it imports a private Keras module
  (`keras.src.layers.convolutional.base_conv`, which any Keras release may move) and SciPy's
  deprecated `scipy.ndimage.interpolation` (gone in SciPy 2.0), and would add three packages
  (deprecated, wrapt, imageio);
- eli5 0.16.0 takes one image per call and calls the model without `training=False`, so Keras 3's
  random augmentation layers (whose `call` defaults to training) transform the image first (on a
  trained relu_layers, predicted probabilities moved by up to 0.92).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.models import conv_layers


def feature_layer(model: Any) -> Any:
    """The last Conv2D layer, or the last of the Activation / BatchNormalization layers right after it.

    Grad-CAM weighs the feature maps the next layers see: for `conv` + `activation` (relu_layers) that
    is the activation's output. Measured on relu_layers (3 epochs, 2,165 images): on its raw Conv2D
    output, 116 of 561 correct test digits got an all-zero map and 36% had more heat on the stroke
    than on the background; on the activation's output, 1 map was zero and 70% did.
    """
    import keras

    convolutions = conv_layers(model)
    if not convolutions:
        raise ValueError(f"Model {model.name!r} has no Conv2D layer; Grad-CAM needs one.")
    position = model.layers.index(convolutions[-1])
    while (position + 1 < len(model.layers)
           and isinstance(model.layers[position + 1], keras.layers.Activation | keras.layers.BatchNormalization)):
        position += 1
    return model.layers[position]


def class_activation_maps(model: Any, images: np.ndarray, classes: np.ndarray | None = None) -> np.ndarray:
    """Grad-CAM heat maps of `classes` (default: the predicted ones) over the last convolution
    (`feature_layer`).

    One forward and backward pass for the whole batch; the model runs with `training=False`, so
    augmentation layers are identity and BatchNormalization uses its moving statistics.

    Args:
        model: a Keras model with at least one Conv2D layer and a Dense softmax head.
        images: (N, H, W, C) inputs as the model takes them.
        classes: (N,) class index per image; None takes each image's predicted class.

    Returns:
        (N, H, W) float32 heat in [0, 1], each map scaled to its own maximum (all zero where the
        class gained nothing from any location).
    """
    import keras
    import tensorflow as tf

    features_from = feature_layer(model)
    head = model.layers[-1]
    if not isinstance(head, keras.layers.Dense):
        raise ValueError(f"The last layer of {model.name!r} must be the Dense head, got {type(head).__name__}.")
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[1:] != tuple(model.input_shape[1:]):
        raise ValueError(f"images must be shaped (N, *{tuple(model.input_shape[1:])}), got {images.shape}.")
    if classes is not None:
        classes = np.asarray(classes)
        num_classes = head.units
        if classes.shape != (len(images),) or classes.min(initial=0) < 0 or classes.max(initial=0) >= num_classes:
            raise ValueError(f"classes must be shaped ({len(images)},) with values in [0, {num_classes}), "
                             f"got shape {classes.shape}.")
    if not len(images):  # e.g. a gallery with no mistakes to show
        return np.zeros((0, *images.shape[1:3]), dtype=np.float32)
    # The head's input, not the model's output: the class score before softmax (as in the paper). A
    # confident softmax saturates, and float32 gradients through it can vanish to exactly zero.
    probe = keras.Model(model.input, [features_from.output, head.input])
    with tf.GradientTape() as tape:
        features, penultimate = probe(images, training=False)
        logits = tf.matmul(penultimate, head.kernel) + head.bias
        chosen = tf.argmax(logits, axis=1) if classes is None else tf.constant(classes)
        # Images do not interact at inference, so the gradient of the sum is each image's own.
        scores = tf.reduce_sum(tf.gather(logits, chosen, axis=1, batch_dims=1))
    gradients = tape.gradient(scores, features)
    weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)  # one weight per channel and image
    maps = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1, keepdims=True))
    maps = tf.image.resize(maps, images.shape[1:3], method="bilinear")[..., 0].numpy()
    peaks = maps.max(axis=(1, 2), keepdims=True)
    return np.divide(maps, peaks, out=np.zeros_like(maps), where=peaks > 0).astype(np.float32)
