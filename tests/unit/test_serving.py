"""What the served model accepts (issue 15 #6, issue 17 #13): base64 PNG/JPEG images of the trained size,
or pixel arrays of integers 0-255 or floats in [0, 1], read as the pipeline reads image files. A refusal
is an MlflowException with INVALID_PARAMETER_VALUE, which MLflow's scoring server answers as 400
(tests/reliability/test_bad_input.py sends such requests to a served model)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from PIL import Image

from pipeline.serving import check_images, output_columns, predictions_table

SHAPE = (28, 28, 1)
PIXELS = np.random.default_rng(7).integers(0, 256, (3, 28, 28), dtype=np.uint8)


def encoded(pixels: np.ndarray, image_format: str = "PNG", mode: str | None = None) -> str:
    buffer = io.BytesIO()
    image = Image.fromarray(pixels)
    (image.convert(mode) if mode else image).save(buffer, format=image_format)
    return base64.b64encode(buffer.getvalue()).decode()


def refusal(batch: object, shape: tuple[int, ...] = SHAPE) -> str:
    with pytest.raises(MlflowException) as refused:
        check_images(batch, shape)
    assert refused.value.error_code == "INVALID_PARAMETER_VALUE" and refused.value.get_http_status_code() == 400
    return refused.value.message


@pytest.mark.parametrize("wrap", [
    lambda texts: pd.DataFrame({"image": texts}),  # dataframe_split / dataframe_records
    lambda texts: {"image": np.asarray(texts)},  # inputs: {"image": [...]}, instances: [{"image": ...}]
    lambda texts: np.asarray(texts),  # inputs: [...]
], ids=["dataframe", "dict", "strings"])
def test_base64_pngs_are_decoded_to_the_exact_pixels_over_255(wrap) -> None:
    images = check_images(wrap([encoded(image) for image in PIXELS]), SHAPE)
    assert images.dtype == np.float32 and images.shape == (3, *SHAPE)
    assert np.array_equal(images[..., 0], PIXELS.astype(np.float32) / np.float32(255))


def test_colour_and_jpeg_are_converted_to_the_trained_channels() -> None:
    """An RGB PNG becomes grayscale as the folder source converts it; a JPEG is read (lossy, so close)."""
    gray = check_images([encoded(PIXELS[0], mode="RGB")], SHAPE)
    assert np.array_equal(gray[0, ..., 0], PIXELS[0] / np.float32(255))
    smooth = np.tile(np.linspace(0, 255, 28, dtype=np.uint8), (28, 1))
    jpeg = check_images([encoded(smooth, "JPEG")], SHAPE)
    assert np.abs(jpeg[0, ..., 0] * 255 - smooth).max() < 8
    rgb = check_images([encoded(PIXELS[0])], (28, 28, 3))
    assert rgb.shape == (1, 28, 28, 3) and np.array_equal(rgb[0, ..., 2], rgb[0, ..., 0])


def test_integer_pixels_are_divided_by_255_with_or_without_the_channel_axis() -> None:
    for batch in (PIXELS.astype(np.int64), PIXELS[..., np.newaxis].tolist()):
        images = check_images(batch, SHAPE)
        assert images.shape == (3, *SHAPE) and np.array_equal(images[..., 0], PIXELS / np.float32(255))


def test_floats_in_zero_one_are_accepted_as_before() -> None:
    images = check_images(np.full((2, *SHAPE), 0.5).tolist(), SHAPE)
    assert images.dtype == np.float32 and images.shape == (2, *SHAPE) and (images == 0.5).all()


@pytest.mark.parametrize(("batch", "says"), [
    (np.full((1, *SHAPE), 255.0), "floats in [0, 1]; got values from 255 to 255. Pixels of 0-255 must be sent as "
                                  "integers (JSON 200, not 200.0) or divided by 255"),
    (np.full((1, *SHAPE), 300, dtype=np.int64), "integer pixels in 0-255; got values from 300 to 300"),
    (np.full((1, *SHAPE), -1, dtype=np.int64), "integer pixels in 0-255; got values from -1 to -1"),
    (np.full((1, *SHAPE), -0.1), "got values from -0.1 to -0.1"),
    (np.full((1, *SHAPE), np.nan), "NaN or infinite"),
    (np.zeros((2, 5, 5, 1)), "shaped (N, 28, 28, 1) or (N, 28, 28); got shape (2, 5, 5, 1)"),
    (np.full((1, *SHAPE), True), "got true/false values"),
    ([[[["dark"]] * 28] * 28], "got a pixel array holding 'dark', not numbers"),
    ([[[[0.5]] * 28] * 27 + [[[None]] * 28]], "got a pixel array holding None, not numbers"),
    ([[[[10**30]] * 28] * 28], "got a pixel array holding 1000000000000000000000000000000, not numbers"),
    ([[0.0] * 28] * 27 + [[0.0] * 5], "inhomogeneous"),
    ([], "the batch is empty"),
    (pd.DataFrame({"image": []}), "the batch is empty"),
    ({"image": np.asarray([])}, "the batch is empty"),
    (pd.DataFrame({"pixels": [1]}), "expected one column 'image' of base64 PNG/JPEG images; got columns ['pixels']"),
])
def test_other_input_is_refused_saying_what_is_expected(batch: object, says: str) -> None:
    assert says in refusal(batch)


@pytest.mark.parametrize(("row", "says"), [
    (encoded(np.zeros((20, 28), np.uint8)), "row 1: image is 28x20 (width x height), expected 28x28"),
    (base64.b64encode(b"hello, not an image").decode(), "row 1: not a readable PNG/JPEG image"),
    (encoded(PIXELS[0], "GIF"), "row 1: not a readable PNG/JPEG image"),  # PIL reads GIF; it is not accepted
    ("not base64!", "row 1: not base64 text"),
    ("é", "row 1: not base64 text"),
    (encoded(PIXELS[0])[:-40], "row 1: not"),  # truncated: bad padding, or a PNG cut short
])
def test_a_bad_image_row_is_refused_naming_the_row(row: str, says: str) -> None:
    message = refusal(pd.DataFrame({"image": [encoded(PIXELS[0]), row]}))
    assert "1 of 2 image(s) in column 'image' cannot be classified" in message and says in message
    assert "row 0" not in message


def test_every_bad_row_is_named_up_to_ten() -> None:
    message = refusal(["bad!"] * 12 + [encoded(PIXELS[0])])
    assert "12 of 13 image(s)" in message and "row 9: not base64" in message and "... and 2 more" in message
    assert "row 10:" not in message


def test_a_decompression_bomb_is_refused_by_its_header(tmp_path: Path) -> None:
    from tests.unit.test_sources import decompression_bomb

    bomb = decompression_bomb(tmp_path / "bomb.png").read_bytes()
    assert "row 0: refused without decoding" in refusal([base64.b64encode(bomb).decode()])


def test_the_answer_is_a_class_name_and_one_probability_per_class() -> None:
    table = predictions_table(np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]], np.float32), ["cat", "dog", "bird"])
    assert list(table.columns) == ["class", "cat", "dog", "bird"]
    assert table["class"].tolist() == ["dog", "cat"] and table["dog"].tolist() == pytest.approx([0.7, 0.25])


@pytest.mark.parametrize("names", [["class", "dog"], ["cat", "cat"]])
def test_class_names_that_would_collide_as_columns_are_refused(names: list[str]) -> None:
    with pytest.raises(ValueError, match="must be distinct and none may be 'class'"):
        output_columns(names)
