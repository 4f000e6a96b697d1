"""Where the stages write, in one place (the same paths dvc.yaml lists as outs).

    data/raw, data/prepared            ingest, prepare
    models/<variant>/                  train@<variant>
    reports/data/                      ingest, prepare (data report pictures)
    reports/evaluation/<variant>/      evaluate: pictures, per-class scores, confusion matrix CSV
    reports/metrics/<variant>.json     evaluate: test metrics (`dvc metrics show`)
    reports/predictions/<variant>.csv  evaluate: test predictions (`dvc plots show`, confusion)
    reports/curves/<variant>.csv       evaluate: learning curves (`dvc plots show`)
    reports/leaderboard.{md,csv}       compare
    reports/registry.json, model_card.md  register
"""

from __future__ import annotations

from pathlib import Path


def model_dir(root: Path, variant: str) -> Path:
    return root / "models" / variant


def evaluation_dir(root: Path, variant: str) -> Path:
    return root / "reports" / "evaluation" / variant


def metrics_file(root: Path, variant: str) -> Path:
    return root / "reports" / "metrics" / f"{variant}.json"


def predictions_file(root: Path, variant: str) -> Path:
    return root / "reports" / "predictions" / f"{variant}.csv"


def curves_file(root: Path, variant: str) -> Path:
    return root / "reports" / "curves" / f"{variant}.csv"
