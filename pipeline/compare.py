"""The `compare` stage: one leaderboard of every variant (reports/leaderboard.md and .csv).

Ranked on validation accuracy, the number model selection uses; test accuracy is shown beside it
but never used to choose (that would leak the test set into the choice).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import layout
from pipeline.config import PipelineConfig
from pipeline.io import write_text

COLUMNS = ["rank", "variant", "val_accuracy", "test_accuracy", "test_loss", "macro_f1", "errors",
           "params", "epochs", "train_seconds", "images_per_second"]


def _ci95(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of a 95% t-interval (statsmodels), for multi-seed repeats."""
    from statsmodels.stats.weightstats import DescrStatsW

    if len(values) < 2:
        return float(np.mean(values)), float("nan")
    low, high = DescrStatsW(np.asarray(values)).tconfint_mean(alpha=0.05)
    return float(np.mean(values)), float((high - low) / 2)


def leaderboard(config: PipelineConfig, root: Path) -> pd.DataFrame:
    """Collect every variant's metrics and training facts into one sorted table.

    Args:
        config: the validated params (which variants exist).
        root: the project directory.

    Returns:
        One row per variant, best validation accuracy first (ties: fewer parameters first).
    """
    rows = []
    for variant in config.models:
        metrics_path = layout.metrics_file(root, variant)
        training_path = root / "models" / variant / "training.json"
        if not metrics_path.is_file() or not training_path.is_file():
            missing = metrics_path if not metrics_path.is_file() else training_path
            raise FileNotFoundError(f"variant {variant!r} has no {missing}; train and evaluate it first (dvc repro)")
        metrics = json.loads(metrics_path.read_text())
        training = json.loads(training_path.read_text())
        row = {
            "variant": variant,
            "val_accuracy": metrics["val_accuracy"],
            "test_accuracy": metrics["accuracy"],
            "test_loss": metrics["loss"],
            "macro_f1": metrics["macro_f1"],
            "errors": metrics["errors"],
            "params": training["params"],
            "epochs": len(json.loads((root / "models" / variant / "history.json").read_text()).get("loss", [])),
            "train_seconds": training["train_seconds"],
            "images_per_second": training.get("images_per_second"),
        }
        repeats = training.get("seed_repeats")
        if repeats:
            for key in ("val_accuracy", "test_accuracy"):
                mean, half_width = _ci95([repeat[key] for repeat in repeats])
                row[f"{key}_mean"], row[f"{key}_ci95"] = round(mean, 4), round(half_width, 4)
            row["seeds"] = len(repeats)
        rows.append(row)
    table = pd.DataFrame(rows).sort_values(["val_accuracy", "params"], ascending=[False, True], kind="stable")
    table.insert(0, "rank", range(1, len(table) + 1))
    extra = [column for column in table.columns if column not in COLUMNS]
    return table[COLUMNS + extra].reset_index(drop=True)


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table (no `tabulate` dependency)."""
    formatted = table.copy()
    for column in ("val_accuracy", "test_accuracy", "macro_f1"):
        formatted[column] = formatted[column].map(lambda value: f"{value:.4f}")
    formatted["test_loss"] = formatted["test_loss"].map(lambda value: f"{value:.4f}")
    formatted["params"] = formatted["params"].map(lambda value: f"{value:,}")
    header = "| " + " | ".join(formatted.columns) + " |"
    rule = "|" + "|".join("---" for _ in formatted.columns) + "|"
    body = ["| " + " | ".join(str(value) for value in row) + " |" for row in formatted.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def write_leaderboard(config: PipelineConfig, root: Path) -> pd.DataFrame:
    table = leaderboard(config, root)
    write_text(root / "reports" / "leaderboard.csv", table.to_csv(index=False))
    title = "# Leaderboard\n\nRanked on validation accuracy (model selection); test accuracy for reference.\n\n"
    write_text(root / "reports" / "leaderboard.md", title + to_markdown(table))
    return table
