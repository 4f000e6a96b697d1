"""One image file, or the same bytes sent to the served model, read as the pipeline reads it: PNG or
JPEG only, the size checked from the header before the pixels are decoded (wrong size is refused, never
resized), converted to the trained channels (grayscale "L" or "RGB"), uint8 (H, W, C).

The folder source (`sources.read_folder`), `python -m pipeline predict` and the served model
(`serving.KerasClassifier`) all read images here, so the three accept and refuse the same images.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np

from pipeline.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
# The decoders PIL may try: a file named .png that is really a TIFF or a PSD, or bytes of any format
# sent to the served model, then never reach the parsers of formats nobody meant to accept.
IMAGE_FORMATS = ("PNG", "JPEG")
TRAINED_SIZE = "data.image_width/image_height"  # where the expected size comes from, for the messages


def _open(source: str | Path | bytes):  # -> PIL.Image.Image, imported lazily (PIL is not needed to import this)
    from PIL import Image

    return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source, formats=IMAGE_FORMATS)


def _size_problem(name: str, size: tuple[int, int], height: int, width: int) -> str | None:
    if size == (width, height):
        return None
    return f"{name}: image is {size[0]}x{size[1]} (width x height), expected {width}x{height} from {TRAINED_SIZE}"


def check_image_header(source: str | Path | bytes, height: int, width: int, name: str | None = None) -> str | None:
    """What is wrong with an image judged by its header alone (not decoded), or None.

    PIL reads the declared size without decoding the pixels, so a decompression bomb (a small PNG that
    declares 30000x30000) is refused by its size before it can take memory.

    Args:
        source: an image file (a path or its str), or its bytes.
        height, width: the size it must have.
        name: what the message calls it (default: the path; required for bytes, e.g. "row 3").

    Returns:
        A sentence starting with `name`, or None when the header is acceptable.
    """
    from PIL import Image, UnidentifiedImageError

    name = name or str(source)
    try:
        with warnings.catch_warnings():
            # A declared size above Image.MAX_IMAGE_PIXELS warns, above twice that it raises; either way
            # it is the size check below that decides, before anything is decoded.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with _open(source) as image:
                size = image.size
    except Image.DecompressionBombError as error:
        return f"{name}: refused without decoding: {error}"
    except UnidentifiedImageError:
        return f"{name}: not a readable PNG/JPEG image (PIL recognises neither format in it)"
    except (OSError, ValueError) as error:
        return f"{name}: not a readable PNG/JPEG image ({error})"
    return _size_problem(name, size, height, width)


def read_image(source: str | Path | bytes, height: int, width: int, channels: int,
               name: str | None = None) -> np.ndarray:
    """One image as uint8 (H, W, C); its header is checked (size) before its pixels are decoded.

    Args:
        source: an image file (a path or its str), or its bytes.
        height, width, channels: the trained image shape; colour is converted to it (1: grayscale).
        name: what an error calls it (default: the path).

    Raises:
        DataError starting with `name`: not a PNG/JPEG, truncated, or not height x width.
    """
    name = name or str(source)
    problem = check_image_header(source, height, width, name)
    if problem:
        raise DataError(problem)
    return decode_image(source, height, width, channels, name)


def decode_image(source: str | Path | bytes, height: int, width: int, channels: int,
                 name: str | None = None) -> np.ndarray:
    """`read_image` of a source whose header already passed `check_image_header` (the folder source
    checks every header first, then decodes: one header read per file instead of two, 20 % of the time).

    Raises:
        DataError starting with `name`: truncated or undecodable data, or not height x width after all.
    """
    from PIL import Image, UnidentifiedImageError

    name = name or str(source)
    try:
        with _open(source) as image:
            image.load()
            converted = image.convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"{name}: not a readable PNG/JPEG image ({error})") from None
    problem = _size_problem(name, converted.size, height, width)
    if problem:
        raise DataError(problem)
    return np.asarray(converted, dtype=np.uint8).reshape(height, width, channels)
