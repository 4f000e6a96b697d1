"""What the served model accepts (issue 17 #13): a batch of images of the trained shape, values in [0, 1].
A refusal is an MlflowException with INVALID_PARAMETER_VALUE, which MLflow's scoring server answers as 400
(tests/reliability/test_bad_input.py sends such requests to a served model)."""

from __future__ import annotations

import numpy as np
import pytest
from mlflow.exceptions import MlflowException

from pipeline.serving import check_images

SHAPE = (28, 28, 1)


def test_images_in_zero_one_are_accepted_as_float32() -> None:
    images = check_images(np.full((2, *SHAPE), 0.5).tolist(), SHAPE)
    assert images.dtype == np.float32 and images.shape == (2, *SHAPE)


@pytest.mark.parametrize(("batch", "says"), [
    (np.full((1, *SHAPE), 255.0), "got values from 255 to 255. Pixels of 0-255 must be divided by 255"),
    (np.full((1, *SHAPE), 200, dtype=np.int64), "floats in [0, 1]; got values from 200 to 200"),
    (np.full((1, *SHAPE), -0.1), "got values from -0.1 to -0.1"),
    (np.full((1, *SHAPE), np.nan), "NaN or infinite"),
    (np.zeros((2, 5, 5, 1)), "shaped (N, 28, 28, 1); got shape (2, 5, 5, 1)"),
    ([[["dark"]]], "expected a batch of 28x28x1"),
])
def test_other_input_is_refused_saying_what_is_expected(batch: object, says: str) -> None:
    with pytest.raises(MlflowException) as refused:
        check_images(batch, SHAPE)
    assert refused.value.error_code == "INVALID_PARAMETER_VALUE" and says in refused.value.message
    assert refused.value.get_http_status_code() == 400
