"""A variant's scores: their names (the same in reports/metrics/<variant>.json, on the MLflow run and
in the leaderboard), how they are computed, and their uncertainty.
"""

from __future__ import annotations

import numpy as np

# val_accuracy is the trained (restored-best) model's accuracy on the validation split: the number
# model selection uses. The test scores are reported, never used to choose.
METRICS = ("val_accuracy", "test_accuracy", "test_loss", "test_macro_f1", "test_errors", "test_images")


def score(y_val: np.ndarray, val_predicted: np.ndarray, y_test: np.ndarray, test_probabilities: np.ndarray,
          class_names: list[str]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """The METRICS of one model and its per-class precision, recall and F1 on the test split."""
    from sklearn.metrics import accuracy_score, classification_report, log_loss

    labels = list(range(len(class_names)))
    predicted = test_probabilities.argmax(axis=1)
    report = classification_report(y_test, predicted, labels=labels, target_names=class_names,
                                   output_dict=True, zero_division=0)
    metrics = {
        "val_accuracy": float(accuracy_score(y_val, val_predicted)),
        "test_accuracy": float(accuracy_score(y_test, predicted)),
        "test_loss": float(log_loss(y_test, test_probabilities, labels=labels)),
        "test_macro_f1": float(report["macro avg"]["f1-score"]),
        "test_errors": int((predicted != y_test).sum()),
        "test_images": int(y_test.size),
    }
    per_class = {name: {key: float(value) for key, value in report[name].items()} for name in class_names}
    return metrics, per_class


def ci95(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of a 95% t-interval (statsmodels), for multi-seed repeats."""
    from statsmodels.stats.weightstats import DescrStatsW

    if len(values) < 2:
        return float(np.mean(values)), float("nan")
    low, high = DescrStatsW(np.asarray(values)).tconfint_mean(alpha=0.05)
    return float(np.mean(values)), float((high - low) / 2)


def accuracy_interval(correct: int, total: int) -> tuple[float, float]:
    """The 95% Wilson interval of an accuracy of `correct` out of `total` images (statsmodels)."""
    from statsmodels.stats.proportion import proportion_confint

    low, high = proportion_confint(correct, total, alpha=0.05, method="wilson")
    return float(low), float(high)
