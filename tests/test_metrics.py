import numpy as np
import pytest

from fairprune.fairness import fairness_gaps, group_stats, undefined_gaps


def test_group_stats_hand_computed():
    # group 0: 3 samples, 2 correct; group 1: 1 sample (single), correct; group 2: absent.
    y_true = [0, 1, 1, 0]
    y_pred = [0, 1, 0, 0]
    loss = [0.1, 0.2, 2.0, 0.5]
    group = [0, 0, 0, 1]
    s = group_stats(y_true, y_pred, loss, group, num_groups=3)
    assert s.n.tolist() == [3, 1, 0]
    assert s.accuracy[:2] == pytest.approx([2 / 3, 1.0])
    assert s.loss[:2] == pytest.approx([(0.1 + 0.2 + 2.0) / 3, 0.5])
    assert np.isnan(s.accuracy[2]) and np.isnan(s.loss[2])
    assert s.overall_accuracy == pytest.approx(0.75)
    assert s.overall_loss == pytest.approx(2.8 / 4)


def test_gaps_against_dense_hand_computed():
    dense = group_stats([0, 0, 1, 1, 1], [0, 0, 1, 1, 0], [0.1, 0.1, 0.2, 0.2, 1.0], [0, 0, 1, 1, 1], 2, 2)
    pruned = group_stats([0, 0, 1, 1, 1], [0, 1, 1, 0, 0], [0.3, 0.9, 0.4, 1.2, 1.5], [0, 0, 1, 1, 1], 2, 2)
    gaps = fairness_gaps(pruned, dense)
    # accuracies: dense [1, 2/3], pruned [1/2, 1/3]; overall dense 4/5, pruned 2/5
    assert gaps["accuracy_gap"] == pytest.approx(1 / 2 - 1 / 3)
    drops = np.array([1 - 1 / 2, 2 / 3 - 1 / 3])
    assert gaps["degradation_gap"] == pytest.approx(abs(drops[0] - drops[1]))
    assert gaps["worst_excess_drop"] == pytest.approx(drops.max() - (4 / 5 - 2 / 5))
    excess = np.array([(0.3 + 0.9) / 2 - 0.1, (0.4 + 1.2 + 1.5) / 3 - (0.2 + 0.2 + 1.0) / 3])
    assert gaps["excess_loss_gap"] == pytest.approx(abs(excess[0] - excess[1]))
    # binary target: demographic parity on positive predictions, equalized odds on TPR/FPR
    assert gaps["demographic_parity_gap"] == pytest.approx(abs(1 / 2 - 1 / 3))
    tpr = [np.nan, 1 / 3]
    fpr = [1 / 2, np.nan]
    assert np.isnan(tpr[0]) and np.isnan(fpr[1])
    # each rate is defined for one group only: nothing to compare (the old code said 0.0, perfect fairness)
    assert np.isnan(gaps["equalized_odds_gap"])
    assert "equalized_odds_gap" in undefined_gaps(pruned, dense)


def test_missing_group_is_left_out_of_gaps():
    dense = group_stats([0, 1, 2], [0, 1, 2], [0.1, 0.1, 0.1], [0, 1, 1], 3, num_classes=3)
    pruned = group_stats([0, 1, 2], [0, 1, 0], [0.1, 0.3, 0.9], [0, 1, 1], 3, num_classes=3)
    gaps = fairness_gaps(pruned, dense)
    assert gaps["accuracy_gap"] == pytest.approx(0.5)
    assert gaps["degradation_gap"] == pytest.approx(0.5)
    assert "demographic_parity_gap" not in gaps


def test_dense_against_itself_has_zero_degradation():
    s = group_stats([0, 1, 1], [0, 0, 1], [0.1, 0.9, 0.2], [0, 1, 1], 2)
    gaps = fairness_gaps(s, s)
    assert gaps["degradation_gap"] == 0 and gaps["excess_loss_gap"] == 0 and gaps["worst_excess_drop"] == 0


def test_single_pass_equals_per_group_loop():
    rng = np.random.default_rng(0)
    y, p, g = rng.integers(0, 4, 500), rng.integers(0, 4, 500), rng.integers(0, 6, 500)
    loss = rng.random(500)
    s = group_stats(y, p, loss, g, 7)
    for a in range(6):
        assert s.accuracy[a] == pytest.approx(np.mean(y[g == a] == p[g == a]))
        assert s.loss[a] == pytest.approx(loss[g == a].mean())
    assert s.n[6] == 0


def test_a_single_group_defines_no_gap():
    # one group present: the old code reported every gap as 0.0
    dense = group_stats([0, 1, 1, 0], [0, 1, 1, 0], [0.1] * 4, [1, 1, 1, 1], 3, num_classes=2)
    pruned = group_stats([0, 1, 1, 0], [0, 0, 1, 0], [0.5] * 4, [1, 1, 1, 1], 3, num_classes=2)
    gaps = fairness_gaps(pruned, dense)
    assert all(np.isnan(v) for v in gaps.values()), gaps
    assert set(undefined_gaps(pruned, dense)) == set(gaps)


def test_equalized_odds_is_the_larger_of_the_two_rate_spreads_when_both_are_defined():
    # group 0: TPR 1/2, FPR 0; group 1: TPR 1, FPR 1/2
    y_true, y_pred, group = [1, 1, 0, 0, 1, 1, 0, 0], [1, 0, 0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 1, 1, 1, 1]
    s = group_stats(y_true, y_pred, [0.1] * 8, group, 2, num_classes=2)
    assert fairness_gaps(s, s)["equalized_odds_gap"] == pytest.approx(0.5)
    assert undefined_gaps(s, s) == {}


@pytest.mark.parametrize("bad", [2, -1])
def test_out_of_range_group_labels_are_rejected(bad):
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        group_stats([0, 1], [0, 1], [0.1, 0.1], [0, bad], 2)


def test_group_stats_agree_with_fairlearn_metricframe():
    """fairlearn's MetricFrame is the field's reference for per-group metrics; group_stats must agree
    with it on every group it defines (benchmarks/bench_evaluation.py times the two)."""
    from fairlearn.metrics import MetricFrame, false_positive_rate, selection_rate, true_positive_rate
    from sklearn.metrics import accuracy_score

    rng = np.random.default_rng(0)
    n, groups = 3000, 4
    y_true, y_pred = rng.integers(0, 2, n), rng.integers(0, 2, n)
    loss, group = rng.random(n), rng.choice(groups, n, p=[0.6, 0.3, 0.09, 0.01])
    ours = group_stats(y_true, y_pred, loss, group, groups, num_classes=2)
    frame = MetricFrame(metrics={"accuracy": accuracy_score, "positive_rate": selection_rate,
                                 "tpr": true_positive_rate, "fpr": false_positive_rate,
                                 "loss": lambda t, p, sample_loss: float(np.mean(sample_loss))},
                        y_true=y_true, y_pred=y_pred, sensitive_features=group,
                        sample_params={"loss": {"sample_loss": loss}})
    by_group = frame.by_group.reindex(range(groups))
    for name in ("accuracy", "positive_rate", "tpr", "fpr", "loss"):
        np.testing.assert_allclose(getattr(ours, name), by_group[name].to_numpy(dtype=float), rtol=1e-12)
    assert ours.overall_accuracy == pytest.approx(frame.overall["accuracy"], abs=1e-12)
