"""Figures of pipeline.plots, built from small synthetic arrays (no training, no display)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FASHION = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def image_axes(figure):
    return [ax for ax in figure.axes if ax.images]


@pytest.fixture
def predictions():
    """20 samples, 10 classes; 7 mistakes with known confidences (two ties)."""
    rng = np.random.default_rng(0)
    y_true = np.arange(20) % 10
    y_pred = y_true.copy()
    wrong = np.array([1, 3, 4, 8, 11, 15, 19])
    y_pred[wrong] = (y_true[wrong] + 1) % 10
    confidence = rng.uniform(0.2, 0.5, 20)
    confidence[wrong] = [0.6, 0.9, 0.7, 0.9, 0.99, 0.7, 0.55]
    images = rng.uniform(0, 1, (20, 8, 8, 1)).astype(np.float32)
    # Expected order: 0.99 (11), 0.9 (3, 8 by index), 0.7 (4, 15), 0.6 (1), 0.55 (19).
    return images, y_true, y_pred, confidence, [11, 3, 8, 4, 15, 1, 19]


def test_select_mistakes_orders_by_confidence_then_index(predictions):
    _, y_true, y_pred, confidence, expected = predictions
    assert plots.select_mistakes(y_true, y_pred, confidence).tolist() == expected


def test_select_mistakes_limit_and_no_repeats(predictions):
    _, y_true, y_pred, confidence, expected = predictions
    assert plots.select_mistakes(y_true, y_pred, confidence, limit=3).tolist() == expected[:3]
    assert plots.select_mistakes(y_true, y_pred, confidence, limit=0).tolist() == []
    everything = plots.select_mistakes(y_true, y_pred, confidence, limit=100)
    assert len(set(everything.tolist())) == len(everything) == 7


def test_select_mistakes_rejects_bad_arguments(predictions):
    _, y_true, y_pred, confidence, _ = predictions
    with pytest.raises(ValueError, match="limit"):
        plots.select_mistakes(y_true, y_pred, confidence, limit=-1)
    with pytest.raises(ValueError, match="confidence"):
        plots.select_mistakes(y_true, y_pred, confidence[:5])
    with pytest.raises(ValueError, match="equal length"):
        plots.select_mistakes(y_true, y_pred[:5], confidence)


def test_most_confused_pair():
    y_true = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2])
    y_pred = np.array([0, 1, 2, 2, 0, 1, 1, 2, 2])
    # (1, 2) and (2, 1) both have two mistakes: the tie goes to the smallest pair.
    assert plots.most_confused_pair(y_true, y_pred, num_classes=3) == (1, 2)
    y_pred[7] = 1  # a third 2 -> 1 mistake
    assert plots.most_confused_pair(y_true, y_pred, num_classes=3) == (2, 1)
    assert plots.most_confused_pair(y_true, y_true, num_classes=3) is None


def test_error_gallery_titles_match_pictured_images(predictions):
    images, y_true, y_pred, confidence, expected = predictions
    figure, shown = plots.error_gallery(images, y_true, y_pred, confidence, FASHION, rows=2, cols=3)
    assert shown == expected[:6]
    assert len(set(shown)) == len(shown)
    axes = image_axes(figure)
    assert len(axes) == 6
    for ax, index in zip(axes, shown, strict=True):
        first_line, second_line = ax.get_title().split("\n")
        assert first_line == f"Label {FASHION[y_true[index]]} | Predict {FASHION[y_pred[index]]}"
        assert second_line == f"p={confidence[index]:.2f}"
        np.testing.assert_array_equal(ax.images[0].get_array(), images[index, ..., 0])
        assert ax.images[0].get_cmap().name == "gray"


def test_error_gallery_with_fewer_mistakes_than_cells(predictions):
    images, y_true, y_pred, confidence, expected = predictions
    figure, shown = plots.error_gallery(images, y_true, y_pred, confidence, FASHION, rows=4, cols=4)
    assert shown == expected
    assert len(image_axes(figure)) == 7
    assert "7 misclassified of 20 test images (fewer than 16 cells)" in figure.get_suptitle()


def test_error_gallery_restricted_to_indices(predictions):
    images, y_true, y_pred, confidence, _ = predictions
    candidates = np.array([0, 1, 2, 15, 19])  # mistakes among them: 15 (0.7), 1 (0.6), 19 (0.55)
    _, shown = plots.error_gallery(images, y_true, y_pred, confidence, FASHION, indices=candidates)
    assert shown == [15, 1, 19]


def test_error_gallery_placeholder_without_mistakes(predictions):
    images, y_true, _, confidence, _ = predictions
    figure, shown = plots.error_gallery(images, y_true, y_true, confidence, FASHION)
    assert shown == []
    assert not image_axes(figure)
    texts = [text.get_text() for ax in figure.axes for text in ax.texts]
    assert texts == ["No misclassified images among 20 test images"]


def test_error_gallery_rgb_uint8(predictions):
    _, y_true, y_pred, confidence, expected = predictions
    images = np.random.default_rng(1).integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    figure, shown = plots.error_gallery(images, y_true, y_pred, confidence, FASHION, rows=1, cols=2)
    assert shown == expected[:2]
    image = image_axes(figure)[0].images[0]
    assert image.get_array().shape == (8, 8, 3)
    assert image.get_clim() == (0, 255)



def test_gradcam_gallery_has_the_error_gallery_tiles_and_titles(predictions):
    images, y_true, y_pred, confidence, _ = predictions
    gallery, shown = plots.error_gallery(images, y_true, y_pred, confidence, FASHION, rows=2, cols=3)
    heatmaps = np.random.default_rng(2).uniform(0, 1, (len(shown), 8, 8))
    figure = plots.gradcam_gallery(images, heatmaps, shown, y_true, y_pred, confidence, FASHION, cols=3)
    tiles, gallery_tiles = image_axes(figure), image_axes(gallery)
    assert [ax.get_title() for ax in tiles] == [ax.get_title() for ax in gallery_tiles]
    assert [ax.get_subplotspec().get_geometry() for ax in tiles] == [
        ax.get_subplotspec().get_geometry() for ax in gallery_tiles]
    for ax, heat, index in zip(tiles, heatmaps, shown, strict=True):
        digit, overlay = ax.images
        np.testing.assert_array_equal(digit.get_array(), images[index, ..., 0])
        assert digit.get_cmap().name == "gray"
        np.testing.assert_array_equal(overlay.get_array(), heat)
        assert overlay.get_cmap().name == "jet" and overlay.get_clim() == (0, 1) and overlay.get_alpha() == 0.45


def test_gradcam_gallery_rgb_shows_grey_and_rejects_mismatched_heat(predictions):
    _, y_true, y_pred, confidence, expected = predictions
    images = np.random.default_rng(1).integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    figure = plots.gradcam_gallery(images, np.zeros((2, 8, 8)), expected[:2], y_true, y_pred, confidence,
                                   FASHION)
    digit = image_axes(figure)[0].images[0]
    np.testing.assert_allclose(digit.get_array(), images[expected[0]].mean(axis=-1) / 255)
    with pytest.raises(ValueError, match=r"heatmaps must be shaped \(2, 8, 8\)"):
        plots.gradcam_gallery(images, np.zeros((3, 8, 8)), expected[:2], y_true, y_pred, confidence, FASHION)


def test_gradcam_gallery_placeholder_without_tiles(predictions):
    images, y_true, _, confidence, _ = predictions
    figure = plots.gradcam_gallery(images, np.zeros((0, 8, 8)), [], y_true, y_true, confidence, FASHION)
    assert not image_axes(figure)
    assert [text.get_text() for ax in figure.axes for text in ax.texts] == ["No misclassified images, so no heat maps"]


def test_confusion_matrix_figure_counts_and_long_names():
    matrix = np.arange(100).reshape(10, 10)
    figure = plots.confusion_matrix_figure(matrix, FASHION)
    ax = figure.axes[0]
    assert [label.get_text() for label in ax.get_xticklabels()] == FASHION
    assert ax.get_xticklabels()[0].get_rotation() == 45
    assert sorted(int(text.get_text()) for text in ax.texts) == list(range(100))
    with pytest.raises(ValueError, match="square"):
        plots.confusion_matrix_figure(matrix[:3], FASHION)


def test_learning_curves_legend_and_epochs():
    history = {"loss": [0.9, 0.5, 0.3], "val_loss": [0.7, 0.5, 0.4], "accuracy": [0.7, 0.8, 0.9]}
    history["val_accuracy"] = [0.75, 0.8, 0.85]
    figure = plots.learning_curves_figure(history, "three-conv")
    names = [text.get_text() for text in figure.legends[0].get_texts()]
    assert names == ["loss", "val_loss", "accuracy", "val_accuracy"]
    lines = [line for ax in figure.axes for line in ax.get_lines()]
    assert all(line.get_xdata()[0] == 1 for line in lines)
    assert figure.axes[0].get_xlabel() == "epoch"


def test_learning_curves_skip_missing_and_reject_empty():
    figure = plots.learning_curves_figure({"loss": [0.5, 0.2], "val_loss": []}, "partial")
    assert [text.get_text() for text in figure.legends[0].get_texts()] == ["loss"]
    with pytest.raises(ValueError):
        plots.learning_curves_figure({}, "empty")
    with pytest.raises(ValueError):
        plots.learning_curves_figure({"lr": [0.1]}, "unknown keys only")


def test_save_figure_writes_png_atomically(tmp_path):
    figure = plots.learning_curves_figure({"loss": [1.0, 0.5]}, "save")
    target = tmp_path / "curves.png"
    assert plots.save_figure(figure, target) == target
    assert target.read_bytes()[:8] == PNG_SIGNATURE
    assert [path.name for path in tmp_path.iterdir()] == ["curves.png"]


@pytest.mark.parametrize(("in_channels", "filters", "shown"), [(1, 8, 8), (3, 70, 64)])
def test_filters_figure(in_channels, filters, shown):
    kernels = np.random.default_rng(0).normal(size=(5, 5, in_channels, filters))
    figure = plots.filters_figure(kernels, "conv2d")
    (ax,) = image_axes(figure)
    assert [text.get_text() for text in ax.texts] == [str(index) for index in range(shown)]
    mosaic = np.ma.getdata(ax.images[0].get_array())
    gap = 2  # round(0.35 * 5)
    cols = min(shown, 8)
    assert mosaic.shape == (-(-shown // cols) * (5 + gap) - gap, cols * (5 + gap) - gap)
    np.testing.assert_allclose(mosaic[:5, 5 + gap:10 + gap], kernels[..., 1].mean(axis=2))  # filter 1
    last_row, last_col = divmod(shown - 1, cols)
    top, left = last_row * (5 + gap), last_col * (5 + gap)
    np.testing.assert_allclose(mosaic[top:top + 5, left:left + 5], kernels[..., shown - 1].mean(axis=2))
    assert np.isnan(mosaic[:, 5:5 + gap]).all()  # the gap
    assert (f"first {shown} shown" in figure.get_suptitle()) == (shown < filters)
    with pytest.raises(ValueError, match="kh, kw"):
        plots.filters_figure(kernels[..., 0], "wrong rank")


@pytest.mark.parametrize("channels", [1, 3])
def test_feature_maps_figure(channels):
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 1, (12, 12, channels))
    maps = [("conv2d", rng.random((10, 10, 20))), ("conv2d_1", rng.random((4, 4, 5)))]
    figure = plots.feature_maps_figure(maps, image, "maps", max_maps=8)
    axes = image_axes(figure)
    assert len(axes) == 4  # per layer: the input image, then its channels side by side
    row_labels = [ax.get_ylabel() for ax in figure.axes if ax.get_ylabel()]
    assert row_labels == ["conv2d\n10x10x20", "conv2d_1\n4x4x5"]
    first, second = axes[1], axes[3]
    assert [label.get_text() for label in first.get_xticklabels()] == [f"ch {index}" for index in range(8)]
    assert [label.get_text() for label in second.get_xticklabels()] == [f"ch {index}" for index in range(5)]
    strip = np.ma.getdata(first.images[0].get_array())
    channel = maps[0][1][..., 3]
    tile = strip[:, 3 * (10 + 1):3 * (10 + 1) + 10]  # gap round(0.1 * 10) = 1
    np.testing.assert_allclose(tile, (channel - channel.min()) / (channel.max() - channel.min()))
    with pytest.raises(ValueError, match="empty"):
        plots.feature_maps_figure([], image, "none")


@pytest.mark.parametrize("channels", [1, 3])
def test_samples_per_class_figure(channels):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (30, 6, 6, channels), dtype=np.uint8)  # 255 is the gap colour
    labels = np.array([0] * 12 + [1] * 3 + [2] * 15)
    names = ["zero", "one", "two"]
    figure = plots.samples_per_class_figure(images, labels, names, per_class=4, seed=3, gap=2)
    strips = [ax.images[0].get_array() for ax in image_axes(figure)]
    assert [strip.shape[1] for strip in strips] == [4 * 6 + 3 * 2, 3 * 6 + 2 * 2, 4 * 6 + 3 * 2]
    row_labels = [ax.get_ylabel() for ax in figure.axes if ax.get_ylabel()]
    assert row_labels == ["zero\n(n=12)", "one\n(n=3)", "two\n(n=15)"]
    again = plots.samples_per_class_figure(images, labels, names, per_class=4, seed=3, gap=2)
    for first, second in zip(strips, (ax.images[0].get_array() for ax in image_axes(again)), strict=True):
        np.testing.assert_array_equal(first, second)
    pictures = images if channels == 3 else images[..., 0]
    for strip, members in zip(strips, (pictures[:12], pictures[12:15], pictures[15:]), strict=True):
        tiles = [np.asarray(strip[:, start:start + 6]) for start in range(0, strip.shape[1], 6 + 2)]
        assert all(any(np.array_equal(tile, member) for member in members) for tile in tiles)
        assert len({tile.tobytes() for tile in tiles}) == len(tiles)  # no image twice
        assert (np.asarray(strip[:, 6:8]) == 255).all()  # the gap between the first two


def test_samples_per_class_row_without_images():
    images = np.zeros((4, 5, 5, 1), dtype=np.uint8)
    figure = plots.samples_per_class_figure(images, np.array([0, 0, 0, 0]), ["zero", "one"], per_class=3)
    assert len(image_axes(figure)) == 1
    assert [text.get_text() for ax in figure.axes for text in ax.texts] == ["no images"]


def test_class_histogram_figure():
    counts = {"train": {"0": 5, "1": 7, "2": 1}, "test": {"zero": 2, "one": 3}}
    figure = plots.class_histogram_figure(counts, ["zero", "one", "two"])
    ax = figure.axes[0]
    heights = [patch.get_height() for patch in ax.patches]
    assert heights == [5, 7, 1, 2, 3, 0]
    assert [text.get_text() for text in figure.legends[0].get_texts()] == ["train (13)", "test (5)"]
    with pytest.raises(ValueError, match="not in class_names"):
        plots.class_histogram_figure({"train": {"7": 1}}, ["zero", "one", "two"])


def test_disagreement_figure_titles_both_directions_most_confident_first() -> None:
    """Images 0-2: only the challenger right; 3: only the champion right; 4-5: both right; the titles
    name label, champion and challenger, and each section starts with the most confident mistake."""
    from pipeline.plots import disagreement_figure

    y_true = np.array([1, 2, 3, 4, 5, 6])
    champion = np.array([7, 8, 9, 4, 5, 6])
    challenger = np.array([1, 2, 3, 0, 5, 6])
    champion_confidence = np.array([0.5, 0.9, 0.7, 0.8, 0.9, 0.9])
    challenger_confidence = np.array([0.9, 0.9, 0.9, 0.6, 0.9, 0.9])
    images = np.random.default_rng(0).random((6, 8, 8, 1))
    figure = disagreement_figure(images, y_true, champion, champion_confidence, challenger, challenger_confidence,
                                 [str(digit) for digit in range(10)], champion="champion v1",
                                 challenger="challenger v2", cols=4, rows=1)
    first, second = figure.subfigs
    assert first._suptitle.get_text() == "challenger v2 right, champion v1 wrong: 3 images"
    assert second._suptitle.get_text() == "champion v1 right, challenger v2 wrong: 1 image"
    titles = [[ax.get_title() for ax in section.axes if ax.get_title()] for section in (first, second)]
    assert titles == [["Label 2 | champion 8 | challenger 2", "Label 3 | champion 9 | challenger 3",
                       "Label 1 | champion 7 | challenger 1"], ["Label 4 | champion 4 | challenger 0"]]
