"""The promotion gate: McNemar's exact test on paired outcomes (checked against statsmodels)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.register import mcnemar_exact_p, mcnemar_gate


def outcomes(both_right: int, only_champion: int, only_challenger: int, both_wrong: int) -> tuple[np.ndarray, ...]:
    champion = np.array([True] * both_right + [True] * only_champion + [False] * only_challenger
                        + [False] * both_wrong)
    challenger = np.array([True] * both_right + [False] * only_champion + [True] * only_challenger
                          + [False] * both_wrong)
    return challenger, champion


def test_clearly_better_challenger_passes() -> None:
    challenger, champion = outcomes(900, 2, 30, 68)
    gate = mcnemar_gate(challenger, champion, alpha=0.05)
    assert gate["better"] and gate["p_value"] < 1e-5
    assert gate["table"] == [[900, 2], [30, 68]]


def test_worse_challenger_fails() -> None:
    challenger, champion = outcomes(900, 30, 2, 68)
    gate = mcnemar_gate(challenger, champion, alpha=0.05)
    assert not gate["better"] and gate["challenger_accuracy"] < gate["champion_accuracy"]


def test_tie_fails() -> None:
    challenger, champion = outcomes(900, 10, 10, 80)
    gate = mcnemar_gate(challenger, champion, alpha=0.05)
    assert not gate["better"] and gate["p_value"] == pytest.approx(1.0)


def test_small_insignificant_gain_fails() -> None:
    challenger, champion = outcomes(900, 5, 9, 86)  # 4 more right, p ~ 0.42
    gate = mcnemar_gate(challenger, champion, alpha=0.05)
    assert gate["challenger_accuracy"] > gate["champion_accuracy"] and not gate["better"]


def test_different_test_sets_are_refused() -> None:
    with pytest.raises(ValueError, match="same test images"):
        mcnemar_gate(np.ones(10, bool), np.ones(11, bool), alpha=0.05)


def test_confidence_interval_matches_the_t_distribution() -> None:
    from scipy import stats

    from pipeline.metrics import ci95

    values = [0.95, 0.97, 0.96, 0.94]
    mean, half_width = ci95(values)
    expected = stats.t.ppf(0.975, df=3) * np.std(values, ddof=1) / np.sqrt(4)
    assert mean == pytest.approx(0.955) and half_width == pytest.approx(expected)
    assert np.isnan(ci95([0.9])[1])  # one seed: no interval


@pytest.mark.parametrize("champion_only, challenger_only", [
    (0, 0), (0, 1), (1, 0), (3, 3), (2, 30), (30, 2), (12, 20), (0, 45), (150, 170), (400, 600)])
def test_exact_p_value_is_statsmodels_mcnemar(champion_only: int, challenger_only: int) -> None:
    from statsmodels.stats.contingency_tables import mcnemar

    table = np.array([[500, champion_only], [challenger_only, 40]])
    expected = float(mcnemar(table, exact=True).pvalue)
    assert mcnemar_exact_p(champion_only, challenger_only) == pytest.approx(expected, rel=1e-9, abs=1e-300)
