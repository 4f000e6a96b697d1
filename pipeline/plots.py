"""Every matplotlib figure of the project: error and Grad-CAM galleries, disagreements, confusion matrix,
curves, filters, data.

Figures are built as `matplotlib.figure.Figure` objects, never through pyplot's global state, so
building them is thread-safe and needs no display; `save_figure` renders PNGs with Agg. Images are
numpy arrays shaped (N, H, W, C), C = 1 (grayscale) or 3 (RGB), float in [0, 1] or uint8 in [0, 255].

Longer than the project's other modules (about 600 lines) on purpose: it is the one place for every
figure, each a function that can be read alone, sharing the image and label helpers at the top.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from pipeline.io import write_with

TITLE_FONT = 9
CURVES = (("loss", "loss"), ("val_loss", "loss"), ("accuracy", "accuracy"), ("val_accuracy", "accuracy"))


def save_figure(figure: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Write `figure` atomically; the format comes from the suffix of `path` (e.g. .png).

    Returns:
        The written path.
    """
    # Every figure here is laid out by matplotlib's constrained layout, which already keeps titles and
    # labels inside the canvas; bbox_inches="tight" would draw each figure twice (about 2 s of the
    # 4.5 s an evaluation spends on its six pictures).
    return write_with(path, lambda temporary: figure.savefig(temporary, dpi=dpi))


def _show_image(ax: Axes, image: np.ndarray, cmap: str = "gray") -> None:
    """Draw one (H, W, 1), (H, W, 3) or (H, W) image without ticks, on its true value range."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] != 3):
        raise ValueError(f"An image must be shaped (H, W, 1) or (H, W, 3), got {image.shape}.")
    vmax = 255 if image.dtype == np.uint8 else 1.0  # keep a faint digit faint: no per-image stretch
    ax.imshow(image, cmap=cmap if image.ndim == 2 else None, vmin=0, vmax=vmax, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _check_labels(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.ndim != 1 or y_true.shape != y_pred.shape:
        raise ValueError(
            f"y_true and y_pred must be 1-D of equal length, got {y_true.shape} and {y_pred.shape}."
        )
    return y_true, y_pred


def select_mistakes(
    y_true: np.ndarray, y_pred: np.ndarray, confidence: np.ndarray, limit: int | None = None
) -> np.ndarray:
    """Indices of misclassified samples, most confident mistake first, ties by ascending index.

    Args:
        y_true: integer labels, shape (N,).
        y_pred: predicted labels, shape (N,).
        confidence: probability of the predicted class, shape (N,).
        limit: keep at most this many indices (None keeps all).

    Returns:
        Distinct int indices into the N samples.
    """
    y_true, y_pred = _check_labels(y_true, y_pred)
    confidence = np.asarray(confidence, dtype=float)
    if confidence.shape != y_true.shape:
        raise ValueError(
            f"confidence must have shape {y_true.shape} (one value per sample), got {confidence.shape}."
        )
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be None or >= 0, got {limit}.")
    wrong = np.flatnonzero(y_true != y_pred)
    order = wrong[np.lexsort((wrong, -confidence[wrong]))]  # last key is primary: confidence, then index
    return order if limit is None else order[:limit]


def most_confused_pair(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> tuple[int, int] | None:
    """The off-diagonal (true, predicted) pair with the most mistakes.

    Args:
        y_true: integer labels, shape (N,).
        y_pred: predicted labels, shape (N,).
        num_classes: number of classes; labels are 0 .. num_classes - 1.

    Returns:
        (true class, predicted class); ties go to the smallest pair; None when there is no mistake.
    """
    y_true, y_pred = _check_labels(y_true, y_pred)
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}.")
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    np.fill_diagonal(matrix, 0)
    if matrix.max(initial=0) == 0:
        return None
    # argmax returns the first maximum in row-major order, i.e. the smallest (true, predicted) pair.
    true_class, predicted_class = np.unravel_index(np.argmax(matrix), matrix.shape)
    return int(true_class), int(predicted_class)


def _placeholder(text: str, title: str) -> Figure:
    figure = Figure(figsize=(6, 2), layout="constrained")
    ax = figure.add_subplot()
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=12, wrap=True)
    ax.set_axis_off()
    figure.suptitle(title)
    return figure


def _tile_title(index: int, y_true: np.ndarray, y_pred: np.ndarray, confidence: np.ndarray,
                class_names: Sequence[str]) -> str:
    return (f"Label {class_names[y_true[index]]} | Predict {class_names[y_pred[index]]}\n"
            f"p={confidence[index]:.2f}")


def _tile_figure(shown: Sequence[int], cols: int, title: str, tile_title: Callable[[int], str],
                 draw_tile: Callable[[Axes, int, int], None]) -> Figure:
    """One tile per sample in `shown`, `cols` per row, each titled `tile_title(sample)`; the galleries'
    shared layout, so that a gallery and its Grad-CAM twin put the same image under the same title.

    Args:
        shown: dataset indices, in grid order (at least one).
        cols: tiles per row; wholly empty rows are dropped.
        title: figure title.
        tile_title: dataset index -> the tile's title.
        draw_tile: draws (axes, position in `shown`, dataset index).
    """
    used_rows = math.ceil(len(shown) / cols)  # drop wholly empty rows; a mostly blank PNG helps no one
    figure = Figure(figsize=(2.2 * cols, 2.5 * used_rows + 0.6), layout="constrained")
    axes = figure.subplots(used_rows, cols, squeeze=False).ravel()
    for position, (ax, index) in enumerate(zip(axes, shown, strict=False)):
        draw_tile(ax, position, index)
        ax.set_title(tile_title(index), fontsize=TITLE_FONT)
    for ax in axes[len(shown):]:
        ax.set_axis_off()
    figure.suptitle(title, fontsize=11)
    return figure


def error_gallery(
    images: np.ndarray,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    confidence: np.ndarray,
    class_names: Sequence[str],
    rows: int = 4,
    cols: int = 4,
    title: str = "Misclassified test images",
    indices: np.ndarray | None = None,
) -> tuple[Figure, list[int]]:
    """A rows x cols grid of misclassified images, most confident first, each shown once.

    Args:
        images: (N, H, W, C) images.
        y_true, y_pred, confidence: per-sample labels, predictions and predicted-class probability.
        class_names: name of each class index, used in the subplot titles.
        rows, cols: grid size.
        title: figure title.
        indices: only these samples are candidates (e.g. one confused pair); default all samples.

    Returns:
        The figure and the dataset indices shown, in grid order (empty when there are no mistakes).
    """
    if rows < 1 or cols < 1:
        raise ValueError(f"rows and cols must be at least 1, got {rows}x{cols}.")
    y_true, y_pred, confidence = _check_gallery(images, y_true, y_pred, confidence, class_names)
    mistakes = select_mistakes(y_true, y_pred, confidence)
    population = len(y_true)
    if indices is not None:
        indices = np.asarray(indices, dtype=int)
        if indices.size and (indices.min() < 0 or indices.max() >= population):
            raise ValueError(f"indices must lie in [0, {population}).")
        mistakes, population = mistakes[np.isin(mistakes, indices)], len(np.unique(indices))
    cells = rows * cols
    shown = [int(index) for index in mistakes[:cells]]
    if not shown:
        return _placeholder(f"No misclassified images among {population} test images", title), []
    if len(shown) < cells:
        summary = f"{len(shown)} misclassified of {population} test images (fewer than {cells} cells)"
    else:
        summary = f"{cells} most confident of {len(mistakes)} misclassified among {population} test images"
    figure = _tile_figure(shown, cols, f"{title}\n{summary}",
                          lambda index: _tile_title(index, y_true, y_pred, confidence, class_names),
                          lambda ax, _, index: _show_image(ax, images[index]))
    return figure, shown


def _check_gallery(images: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, confidence: np.ndarray,
                   class_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y_true, y_pred = _check_labels(y_true, y_pred)
    confidence = np.asarray(confidence, dtype=float)
    if len(images) != len(y_true):
        raise ValueError(f"images ({len(images)}) and y_true ({len(y_true)}) must have the same length.")
    if max(np.max(y_true, initial=0), np.max(y_pred, initial=0)) >= len(class_names):
        raise ValueError(f"A label is outside class_names ({len(class_names)} names).")
    return y_true, y_pred, confidence


def _grey(image: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1] of an (H, W, 1) or (H, W, 3) image, float or uint8 (RGB: the channel mean)."""
    image = np.asarray(image, dtype=float) / (255.0 if np.asarray(image).dtype == np.uint8 else 1.0)
    return image.mean(axis=-1) if image.ndim == 3 else image


def gradcam_gallery(
    images: np.ndarray,
    heatmaps: np.ndarray,
    shown: Sequence[int],
    y_true: np.ndarray,
    y_pred: np.ndarray,
    confidence: np.ndarray,
    class_names: Sequence[str],
    cols: int = 4,
    title: str = "Grad-CAM of the predicted class",
    alpha: float = 0.45,
) -> Figure:
    """The tiles of an `error_gallery` (same samples, order and titles), each grey image under its
    class-activation heat map ('jet': blue cold, red hot, on a fixed 0..1 scale).

    Args:
        images: (N, H, W, C) images, as given to `error_gallery`.
        heatmaps: (len(shown), H, W) heat in [0, 1], one per shown sample, in `shown`'s order.
        shown: the dataset indices `error_gallery` returned.
        y_true, y_pred, confidence, class_names: as given to `error_gallery`, for the titles.
        cols: tiles per row (the gallery's).
        title: figure title.
        alpha: opacity of the heat over the image.

    Returns:
        The figure; a placeholder when `shown` is empty.
    """
    if cols < 1:
        raise ValueError(f"cols must be at least 1, got {cols}.")
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must lie in (0, 1], got {alpha}.")
    y_true, y_pred, confidence = _check_gallery(images, y_true, y_pred, confidence, class_names)
    shown = [int(index) for index in shown]
    heatmaps = np.asarray(heatmaps, dtype=float)
    expected = (len(shown), *images.shape[1:3])
    if heatmaps.shape != expected:
        raise ValueError(f"heatmaps must be shaped {expected} (one per shown image), got {heatmaps.shape}.")
    if not shown:
        return _placeholder("No misclassified images, so no heat maps", title)

    def draw(ax: Axes, position: int, index: int) -> None:
        _show_image(ax, _grey(images[index]))
        ax.imshow(heatmaps[position], cmap="jet", alpha=alpha, vmin=0, vmax=1, interpolation="bilinear")

    return _tile_figure(shown, cols, f"{title}\nred: where the last convolution saw the predicted class",
                        lambda index: _tile_title(index, y_true, y_pred, confidence, class_names), draw)


def confusion_matrix_figure(
    matrix: np.ndarray, class_names: Sequence[str], title: str = "Confusion matrix"
) -> Figure:
    """The confusion matrix (rows true, columns predicted) with counts and a colour bar."""
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] != len(class_names):
        raise ValueError(f"matrix must be square with one row per class name, got {matrix.shape}.")
    size = max(5.0, 0.65 * len(class_names) + 2.5)
    figure = Figure(figsize=(size + 1, size), layout="constrained")
    ax = figure.add_subplot()
    long_names = max(len(str(name)) for name in class_names) > 3
    values_format = "d" if np.issubdtype(matrix.dtype, np.integer) else ".2f"  # "d" fails on floats
    from sklearn.metrics import ConfusionMatrixDisplay  # here: sklearn takes a second to import

    display = ConfusionMatrixDisplay(matrix, display_labels=list(class_names))
    display.plot(ax=ax, colorbar=True, values_format=values_format, xticks_rotation=45 if long_names else 0)
    if long_names:
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
            label.set_rotation_mode("anchor")
    ax.set_title(title)
    return figure


def learning_curves_figure(history: dict[str, list[float]], title: str) -> Figure:
    """loss and val_loss (left axis) with accuracy and val_accuracy (right axis) per epoch, from 1.

    Args:
        history: Keras `History.history`; missing or empty keys are skipped.
        title: figure title.
    """
    curves = [(key, kind) for key, kind in CURVES if len(history.get(key, []))]
    if not curves:
        raise ValueError(f"history has none of {[key for key, _ in CURVES]}; nothing to plot.")
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    loss_ax = figure.add_subplot()
    accuracy_ax = loss_ax.twinx()  # loss can exceed 1 in early epochs; accuracy stays in [0, 1]
    styles = {"loss": ("tab:red", loss_ax), "accuracy": ("tab:blue", accuracy_ax)}
    for key, kind in curves:
        color, ax = styles[kind]
        epochs = np.arange(1, len(history[key]) + 1)
        ax.plot(
            epochs,
            history[key],
            color=color,
            marker="o",
            ls="--" if key.startswith("val_") else "-",
            label=key,
        )
    loss_ax.set_xlabel("epoch")
    loss_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    loss_ax.set_ylabel("loss", color="tab:red")
    accuracy_ax.set_ylabel("accuracy", color="tab:blue")
    lines = loss_ax.get_lines() + accuracy_ax.get_lines()
    # Below the axes, so the legend never hides a curve.
    figure.legend(lines, [line.get_label() for line in lines], loc="outside lower center", ncols=len(lines))
    loss_ax.grid(alpha=0.3)
    loss_ax.set_title(title)
    return figure


def _grid(count: int, max_cols: int) -> tuple[int, int]:
    cols = max(1, min(count, max_cols))
    return math.ceil(count / cols), cols


def _mosaic(tiles: Sequence[np.ndarray], cols: int, gap: int) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """2-D tiles of one shape on a grid, `gap` NaN pixels apart (drawn in the colormap's "bad" colour);
    also each tile's centre in the mosaic's pixel coordinates (x, y)."""
    height, width = tiles[0].shape
    rows = math.ceil(len(tiles) / cols)
    mosaic = np.full((rows * (height + gap) - gap, cols * (width + gap) - gap), np.nan)
    centres = []
    for index, tile in enumerate(tiles):
        top, left = (index // cols) * (height + gap), (index % cols) * (width + gap)
        mosaic[top:top + height, left:left + width] = tile
        centres.append((left + (width - 1) / 2, top + (height - 1) / 2))
    return mosaic, centres


def _colormap(name: str) -> Any:
    from matplotlib import colormaps

    return colormaps[name].with_extremes(bad="white")


def filters_figure(kernels: np.ndarray, title: str, max_filters: int = 64) -> Figure:
    """First-layer conv kernels (kh, kw, in_channels, filters), averaged over input channels, on one
    grid, each numbered above it.

    All filters share one symmetric colour scale, so their weights are comparable. (One image, not
    one Axes per filter: 64 Axes took about a second to lay out and draw.)
    """
    kernels = np.asarray(kernels, dtype=float)
    if kernels.ndim != 4:
        raise ValueError(f"kernels must be shaped (kh, kw, in_channels, filters), got {kernels.shape}.")
    averaged = kernels.mean(axis=2)
    kh, kw, in_channels, filters = kernels.shape
    count = min(filters, max_filters)
    rows, cols = _grid(count, 8)
    gap = max(1, round(0.35 * kh))  # room for the numbers
    mosaic, centres = _mosaic([averaged[..., index] for index in range(count)], cols, gap)
    limit = float(np.abs(averaged).max()) or 1.0
    figure = Figure(figsize=(1.1 * cols + 0.5, 1.2 * rows + 0.7), layout="constrained")
    ax = figure.subplots()
    ax.imshow(mosaic, cmap=_colormap("gray"), vmin=-limit, vmax=limit, interpolation="nearest")
    for index, (x, y) in enumerate(centres):
        ax.text(x, y - kh / 2, str(index), ha="center", va="bottom", fontsize=TITLE_FONT - 1)
    ax.set_axis_off()
    note = f"{filters} filters {kh}x{kw}" + (
        f", mean of {in_channels} input channels" if in_channels > 1 else ""
    )
    figure.suptitle(f"{title}\n{note}" + (f" (first {count} shown)" if count < filters else ""), fontsize=11)
    return figure


def feature_maps_figure(
    feature_maps: list[tuple[str, np.ndarray]], image: np.ndarray, title: str, max_maps: int = 16
) -> Figure:
    """One row per conv layer: the input image, then up to `max_maps` channels of its activation side
    by side, each on its own colour scale (min to max), labelled `ch <n>` below.

    Args:
        feature_maps: (layer name, activation shaped (H, W, channels)) per layer.
        image: the input image, (H, W, C).
        title: figure title.
        max_maps: channels shown per layer.
    """
    if not feature_maps:
        raise ValueError("feature_maps is empty; pass one (layer name, activation) per conv layer.")
    if max_maps < 1:
        raise ValueError(f"max_maps must be at least 1, got {max_maps}.")
    maps = [(name, np.asarray(values, dtype=float)) for name, values in feature_maps]
    for name, values in maps:
        if values.ndim != 3:
            raise ValueError(f"Activation of {name} must be shaped (H, W, channels), got {values.shape}.")
    cols = 1 + min(max_maps, max(values.shape[-1] for _, values in maps))
    figure = Figure(figsize=(1.15 * cols + 0.6, 1.35 * len(maps) + 0.6), layout="constrained")
    axes = figure.subplots(len(maps), 2, squeeze=False, width_ratios=[1, cols - 1])
    for (image_ax, maps_ax), (name, values) in zip(axes, maps, strict=True):
        _show_image(image_ax, image)
        height, width, channels = values.shape
        image_ax.set_ylabel(f"{name}\n{height}x{width}x{channels}", fontsize=TITLE_FONT)
        shown = min(channels, max_maps)
        tiles = []
        for channel in range(shown):
            low, high = values[..., channel].min(), values[..., channel].max()
            tiles.append((values[..., channel] - low) / (high - low) if high > low else np.zeros((height, width)))
        strip, centres = _mosaic(tiles, cols - 1, max(1, round(0.1 * width)))
        maps_ax.imshow(strip, cmap=_colormap("viridis"), vmin=0, vmax=1, interpolation="nearest")
        maps_ax.set_anchor("W")
        maps_ax.set_xticks([x for x, _ in centres], [f"ch {channel}" for channel in range(shown)],
                           fontsize=TITLE_FONT - 1)
        maps_ax.set_yticks([])
        maps_ax.tick_params(length=0)
        for spine in maps_ax.spines.values():
            spine.set_visible(False)
    axes[0, 0].set_title("input", fontsize=TITLE_FONT - 1)
    figure.suptitle(title, fontsize=11)
    return figure


def image_strip(images: Sequence[np.ndarray], gap: int = 2) -> np.ndarray:
    """Images of one shape side by side, separated by `gap` columns of the brightest value (white)."""
    tiles = [np.asarray(image) for image in images]
    if not tiles:
        raise ValueError("image_strip needs at least one image")
    bright = 255 if tiles[0].dtype == np.uint8 else 1.0
    spacer = np.full((tiles[0].shape[0], gap, *tiles[0].shape[2:]), bright, dtype=tiles[0].dtype)
    columns: list[np.ndarray] = []
    for tile in tiles:
        columns += [spacer, tile] if columns else [tile]
    return np.concatenate(columns, axis=1)


def samples_per_class_figure(
    images: np.ndarray, labels: np.ndarray, class_names: Sequence[str], per_class: int = 8, seed: int = 0,
    gap: int = 2,
) -> Figure:
    """One row per class, labelled with its name and count: up to `per_class` seeded samples side by
    side (one strip per row: a grid of one Axes per image took seconds to lay out and draw)."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(
            f"labels must be 1-D with one label per image, got {labels.shape} for {len(images)}."
        )
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}.")
    rng = np.random.default_rng(seed)
    figure = Figure(figsize=(1.0 * per_class + 1.4, 1.05 * len(class_names) + 0.5), layout="constrained")
    axes = figure.subplots(len(class_names), 1, squeeze=False)[:, 0]
    for class_index, (name, ax) in enumerate(zip(class_names, axes, strict=True)):
        members = np.flatnonzero(labels == class_index)
        chosen = np.sort(rng.choice(members, size=min(per_class, members.size), replace=False))
        if chosen.size:
            _show_image(ax, image_strip([images[index] for index in chosen], gap))
            ax.set_anchor("W")  # short rows (few images) start at the left like the others
        else:  # keep the axis so the row still carries its label
            ax.set_xticks([])
            ax.set_yticks([])
            ax.text(0.5, 0.5, "no images", ha="center", va="center", fontsize=TITLE_FONT)
        ax.set_ylabel(f"{name}\n(n={members.size})", fontsize=TITLE_FONT, rotation=0, ha="right", va="center")
    figure.suptitle(f"Samples per class ({len(labels)} images)", fontsize=11)
    return figure


def class_histogram_figure(counts: dict[str, dict[str, int]], class_names: Sequence[str]) -> Figure:
    """Images per class, one bar colour per split.

    Args:
        counts: split -> class -> count; a class key is its name or its index as a string.
        class_names: the classes, in index order.
    """
    if not counts:
        raise ValueError("counts is empty; pass {split: {class: count}}.")
    known = {str(name) for name in class_names} | {str(index) for index in range(len(class_names))}
    heights = {}
    for split, per_class in counts.items():
        unknown = sorted(set(map(str, per_class)) - known)
        if unknown:
            raise ValueError(f"counts[{split!r}] has classes not in class_names: {unknown}.")
        heights[f"{split} ({sum(per_class.values())})"] = [
            per_class.get(str(name), per_class.get(str(index), 0)) for index, name in enumerate(class_names)
        ]
    figure = Figure(figsize=(max(6.0, 0.75 * len(class_names) + 2), 4.2), layout="constrained")
    ax = figure.add_subplot()
    ax.grouped_bar(heights, tick_labels=[str(name) for name in class_names])  # matplotlib >= 3.11
    if max(len(str(name)) for name in class_names) > 3:
        ax.tick_params(axis="x", labelrotation=30)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
            label.set_rotation_mode("anchor")
    ax.set_xlabel("class")
    ax.set_ylabel("images")
    figure.legend(title="split", loc="outside right upper")  # outside: tall bars never hide under it
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("Images per class and split")
    return figure


def save_study_figures(study: Any, directory: Path) -> list[Path]:
    """Optuna's optimization history and parameter importances (its matplotlib visualisations) as PNGs.

    Optuna draws them through pyplot, so each figure is closed once saved. The history needs a completed
    trial, the importances two whose settings differ; without them a figure is left out.

    Returns:
        The written files.
    """
    import warnings

    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as optuna_plots

    complete = [trial for trial in study.get_trials(deepcopy=False) if trial.state.name == "COMPLETE"]
    drawers = {"optimization_history": optuna_plots.plot_optimization_history} if complete else {}
    if len(complete) >= 2:
        drawers["param_importances"] = optuna_plots.plot_param_importances
    written = []
    for name, draw in drawers.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                axes = draw(study, target_name="val_accuracy")
            except (RuntimeError, ValueError):  # e.g. importances of settings that never varied
                continue
        figure = axes.figure
        try:
            figure.set_size_inches(8, 5)
            written.append(write_with(Path(directory) / f"{name}.png",
                                      lambda temporary, figure=figure: figure.savefig(temporary, dpi=100,
                                                                                      bbox_inches="tight")))
        finally:
            plt.close(figure)
    return written


def disagreement_figure(
    images: np.ndarray,
    y_true: np.ndarray,
    champion_pred: np.ndarray,
    champion_confidence: np.ndarray,
    challenger_pred: np.ndarray,
    challenger_confidence: np.ndarray,
    class_names: Sequence[str],
    champion: str,
    challenger: str,
    cols: int = 8,
    rows: int = 2,
) -> Figure:
    """The test images the two models disagree on: McNemar's two discordant counts, as pictures.

    Two sections, each at most rows x cols tiles titled `Label X | champion Y | challenger Z`: the images
    the challenger gets right and the champion wrong (most confident champion mistakes first), then
    those the champion gets right and the challenger wrong (most confident challenger mistakes first).

    Args:
        images: (N, H, W, C) test images.
        y_true: labels; champion_pred/challenger_pred: each model's predicted class per image.
        champion_confidence, challenger_confidence: each model's probability of its predicted class.
        class_names: name of each class index.
        champion, challenger: how the two models are named in the titles (e.g. "champion v3").
        cols, rows: the largest grid of each section.
    """
    if rows < 1 or cols < 1:
        raise ValueError(f"rows and cols must be at least 1, got {rows}x{cols}.")
    y_true, champion_pred = _check_labels(y_true, champion_pred)
    _, challenger_pred = _check_labels(y_true, challenger_pred)
    champion_right, challenger_right = champion_pred == y_true, challenger_pred == y_true
    sections = []
    for heading, only, confidence in (
            (f"{challenger} right, {champion} wrong", challenger_right & ~champion_right, champion_confidence),
            (f"{champion} right, {challenger} wrong", champion_right & ~challenger_right, challenger_confidence)):
        candidates = np.flatnonzero(only)
        order = candidates[np.argsort(-np.asarray(confidence, dtype=float)[candidates], kind="stable")]
        sections.append((heading, len(candidates), [int(index) for index in order[:rows * cols]]))
    heights = [max(1, math.ceil(len(shown) / cols)) for _, _, shown in sections]
    figure = Figure(figsize=(2.2 * cols, 2.6 * sum(heights) + 1.4), layout="constrained")
    subfigures = figure.subfigures(2, 1, height_ratios=heights, squeeze=False).ravel()
    for subfigure, (heading, count, shown), height in zip(subfigures, sections, heights, strict=True):
        more = f", the {len(shown)} most confident shown" if count > len(shown) else ""
        subfigure.suptitle(f"{heading}: {count} image{'' if count == 1 else 's'}{more}", fontsize=11)
        axes = subfigure.subplots(height, cols, squeeze=False).ravel()
        for ax, index in zip(axes, shown, strict=False):
            _show_image(ax, images[index])
            ax.set_title(f"Label {class_names[y_true[index]]} | champion {class_names[champion_pred[index]]} | "
                         f"challenger {class_names[challenger_pred[index]]}", fontsize=TITLE_FONT - 2)
        for ax in axes[len(shown):]:
            ax.set_axis_off()
        if not shown:
            axes[0].text(0.5, 0.5, "none: on every test image, when one is right the other is too",
                         ha="center", va="center", transform=subfigure.transSubfigure)
    figure.suptitle(f"Where {challenger} and {champion} disagree on the test split", fontsize=12)
    return figure
