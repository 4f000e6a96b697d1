"""Grad-CAM checked, not just drawn: on digits a trained model gets right, the heat lies on the stroke.

Trained for real (three epochs on the 868 training images of a 1,200-image sample of the bundled
data), then, on the correctly classified test digits, the mean heat on stroke pixels (value > 0.5) is
compared with the mean on background pixels (value < 0.1). Measured (seed 42): three_conv 83% of
the digits (heat from its last Conv2D, 3x3), relu_layers 64% (from the ReLU after its last Conv2D,
8x8). The thresholds leave about 10 points of margin.

What this does and does not show: the heat is aligned with the image and not inverted. Untrained
models (random weights, seeds 0-2, 300 test digits) also put more heat on the stroke, on 71-91% of
the digits (ink drives any ReLU feature map), so passing it does not show the model learned; the
deletion check at the end, compared with the untrained network, does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.config import load_params
from pipeline.dataset import PreparedData, load_prepared, normalise
from pipeline.gradcam import class_activation_maps
from pipeline.ingest import run_ingest
from pipeline.prepare import run_prepare
from tests.conftest import fit, make_project, tiny_params

pytestmark = pytest.mark.slow

VARIANTS = ("three_conv", "relu_layers")
THRESHOLDS = {"three_conv": 0.7, "relu_layers": 0.55}  # measured 0.83 and 0.64


def stroke_wins(heat: np.ndarray, images: np.ndarray) -> np.ndarray:
    """Per image: is the mean heat on the stroke (pixel > 0.5) above the mean on the background (< 0.1)?"""
    pixels = images[..., 0]
    stroke = np.array([map_[image > 0.5].mean() for map_, image in zip(heat, pixels, strict=True)])
    background = np.array([map_[image < 0.1].mean() for map_, image in zip(heat, pixels, strict=True)])
    return stroke > background


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PreparedData]:
    params = tiny_params(VARIANTS)
    params["data"]["max_images"] = 1200
    params["train"]["epochs"] = 3
    project = make_project(tmp_path_factory.mktemp("gradcam") / "project", params)
    config = load_params(project / "params.yaml")
    run_ingest(config, project)
    run_prepare(config, project)
    return project, load_prepared(project)


@pytest.mark.parametrize("variant", VARIANTS)
def test_heat_lies_on_the_stroke_of_correct_digits(prepared: tuple[Path, PreparedData], variant: str,
                                                   tmp_path: Path) -> None:
    project, data = prepared
    model = fit(load_params(project / "params.yaml"), variant, data, tmp_path / "work").model
    x_test = normalise(data.x_test)
    predicted = model.predict(x_test, verbose=0).argmax(axis=1)
    correct = x_test[predicted == data.y_test]
    assert len(correct) > 100  # enough digits for the share below to mean something
    share = stroke_wins(class_activation_maps(model, correct), correct).mean()
    print(f"{variant}: stroke above background on {share:.1%} of {len(correct)} correct test digits")
    assert share >= THRESHOLDS[variant], f"{variant}: {share:.1%} < {THRESHOLDS[variant]:.0%}"


def deletion_wins(model: object, heat: np.ndarray, images: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Per image: does blanking the hottest half of its stroke pixels cost the class more probability than
    blanking the coolest half? (A deletion check: where the map points is what the prediction rests on.)"""
    hottest, coolest = images.copy(), images.copy()
    for index, (map_, image) in enumerate(zip(heat, images[..., 0], strict=True)):
        stroke = np.flatnonzero(image.ravel() > 0.5)
        order = stroke[np.argsort(map_.ravel()[stroke], kind="stable")]
        half = len(order) // 2
        hottest[index].reshape(-1)[order[-half:]] = 0.0
        coolest[index].reshape(-1)[order[:half]] = 0.0
    return class_logits(model, hottest, classes) < class_logits(model, coolest, classes)


def class_logits(model: object, images: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Each image's score for its class before the softmax (what Grad-CAM explains). Not the probability:
    a confident model's softmax saturates at 1.0 in float32, and two equal probabilities would make a
    tie, counted as a loss, where the scores still differ."""
    import keras

    head = model.layers[-1]  # type: ignore[attr-defined]
    penultimate = keras.Model(model.input, head.input).predict(images, verbose=0)  # type: ignore[attr-defined]
    logits = penultimate @ np.asarray(head.kernel) + np.asarray(head.bias)
    return logits[np.arange(len(images)), classes]


# relu_layers only: three_conv's last convolution sees a 3x3 grid (28 -> 26 -> 13 -> 11 -> 5 -> 3), so its
# map, upsampled, cannot say which half of a stroke mattered. Measured on this module's fits: 44.4 %
# trained against 47.2 % untrained on one machine, 53.3 % against 45.5 % on another.
@pytest.mark.parametrize("variant", ["relu_layers"])
def test_blanking_where_the_heat_is_costs_the_prediction_more(prepared: tuple[Path, PreparedData], variant: str,
                                                              tmp_path: Path) -> None:
    """Stronger than the stroke check above, which untrained models pass too: for the trained model,
    blanking the stroke pixels its map calls hottest lowers the predicted class's score more than
    blanking the coolest ones, on clearly more digits than for the same network untrained (where the
    map reflects ink, not evidence). Measured on this module's 3-epoch fits of relu_layers (class
    logits): 57.8 % trained against 44.6 % untrained. A modest effect at this size."""
    from pipeline.models import build_model
    from pipeline.train import set_determinism

    project, data = prepared
    config = load_params(project / "params.yaml")
    shares = {}
    for trained in (True, False):
        if trained:
            model = fit(config, variant, data, tmp_path / "work").model
        else:
            set_determinism(config.seed)
            model = build_model(config.variant(variant).layers, data.input_shape, data.num_classes)
        x_test = normalise(data.x_test)
        predicted = model.predict(x_test, verbose=0).argmax(axis=1)
        chosen = np.flatnonzero(predicted == data.y_test) if trained else np.arange(len(data.y_test))
        images, classes = x_test[chosen], predicted[chosen]
        shares[trained] = deletion_wins(model, class_activation_maps(model, images, classes), images, classes).mean()
    print(f"{variant}: deletion check {shares[True]:.1%} trained, {shares[False]:.1%} untrained")
    assert shares[True] >= 0.5 and shares[True] > shares[False] + 0.05, shares
