"""The `compare` stage: one leaderboard of every variant (reports/leaderboard.md and .csv).

Ranked on validation accuracy, the number model selection uses; test accuracy is shown beside it
but never used to choose (that would leak the test set into the choice).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.config import PipelineConfig
from pipeline.errors import MissingInputError
from pipeline.io import read_json, write_text
from pipeline.layout import Layout
from pipeline.metrics import METRICS, ci95

# The metrics keep their names (pipeline/evaluate.py METRICS). No seconds: the leaderboard is tracked
# by git and must be the same after a rerun; fit times are on each variant's MLflow run.
COLUMNS = ["rank", "variant", *METRICS[:-1], "params", "epochs"]


def leaderboard(config: PipelineConfig, root: Path) -> pd.DataFrame:
    """Collect every variant's metrics and training facts into one sorted table.

    Args:
        config: the validated params (which variants exist).
        root: the project directory.

    Returns:
        One row per variant, best validation accuracy first (ties: fewer parameters first).
    """
    layout = Layout(root)
    rows = []
    for variant in config.models:
        metrics_path, training_path = layout.metrics_file(variant), layout.training_file(variant)
        if not metrics_path.is_file() or not training_path.is_file():
            missing = metrics_path if not metrics_path.is_file() else training_path
            raise MissingInputError(f"variant {variant!r} has no {missing}; train and evaluate it first (dvc repro)")
        metrics, training = read_json(metrics_path), read_json(training_path)
        row = {"variant": variant, **{name: metrics[name] for name in METRICS[:-1]},
               "params": training["params"], "epochs": training["epochs_run"]}
        repeats = training.get("seed_repeats")
        if repeats:
            for key in ("val_accuracy", "test_accuracy"):
                mean, half_width = ci95([repeat[key] for repeat in repeats])
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
    for column in ("val_accuracy", "test_accuracy", "test_loss", "test_macro_f1"):
        formatted[column] = formatted[column].map(lambda value: f"{value:.4f}")
    formatted["params"] = formatted["params"].map(lambda value: f"{value:,}")
    header = "| " + " | ".join(formatted.columns) + " |"
    rule = "|" + "|".join("---" for _ in formatted.columns) + "|"
    body = ["| " + " | ".join(str(value) for value in row) + " |" for row in formatted.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def run_compare(config: PipelineConfig, root: Path) -> pd.DataFrame:
    """The `compare` stage: write reports/leaderboard.csv and .md; return the table."""
    layout = Layout(root)
    table = leaderboard(config, root)
    write_text(layout.leaderboard_csv, table.to_csv(index=False))
    title = "# Leaderboard\n\nRanked on validation accuracy (model selection); test accuracy for reference.\n\n"
    write_text(layout.leaderboard_md, title + to_markdown(table))
    return table
