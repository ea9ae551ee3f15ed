"""The statistics behind every results table, on cases with a known answer."""
import numpy as np
import pytest

from fairprune.statistics import Bootstrap, holm, pack_correct, unpack_correct

GROUPS = ("a", "b")


def record(method, sparsity, seed, correct_by_group):
    return {"method": method, "sparsity": sparsity, "seed": seed,
            "groups": {g: {"n": len(c), "accuracy": float(np.mean(c))} for g, c in zip(GROUPS, correct_by_group)},
            "correct": {g: pack_correct(c) for g, c in zip(GROUPS, correct_by_group)}}


def test_correctness_bits_round_trip():
    correct = np.random.default_rng(0).random(1001) < 0.7
    assert np.array_equal(unpack_correct(pack_correct(correct), 1001), correct)


def test_the_interval_covers_a_known_accuracy_at_the_nominal_rate():
    """One seed, groups of 200 and 60 samples with true accuracies 0.9 and 0.7: over 300 simulated test
    sets the 95 % interval of the overall accuracy covers its true value 0.854 about 95 % of the time."""
    rng = np.random.default_rng(0)
    n, p = (200, 60), (0.9, 0.7)
    truth = (n[0] * p[0] + n[1] * p[1]) / sum(n)
    covered = 0
    for trial in range(300):
        correct = [rng.random(k) < q for k, q in zip(n, p)]
        low, high = Bootstrap([record("dense", 0.0, 0, correct)], n_boot=400, seed=trial) \
            .metric("dense", 0.0, "accuracy").interval()
        covered += low <= truth <= high
    assert 0.91 <= covered / 300 <= 0.99


def test_seeds_are_resampled_too():
    """With model-to-model variation across seeds the interval is wider than the test split's alone."""
    rng = np.random.default_rng(1)
    same = [record("dense", 0.0, s, [rng.random(300) < 0.8, rng.random(300) < 0.8]) for s in range(5)]
    base = [rng.random(300) < 0.8, rng.random(300) < 0.8]
    spread = [record("dense", 0.0, s, [base[0] if s % 2 else np.zeros(300, bool), base[1]]) for s in range(5)]
    width = lambda records: np.diff(Bootstrap(records, n_boot=500).metric("dense", 0.0, "accuracy").interval())[0]  # noqa: E731
    assert width(spread) > 3 * width(same)


def test_paired_comparison_sees_a_small_difference_that_unpaired_resampling_cannot():
    """Two models that differ on 6 of 1000 samples: paired by test sample the difference's interval
    excludes 0; resampled independently (records without per-sample bits) it does not."""
    rng = np.random.default_rng(2)
    base = [rng.random(500) < 0.8, rng.random(500) < 0.8]
    better = [c.copy() for c in base]
    better[0][np.nonzero(~base[0])[0][:3]] = True
    better[1][np.nonzero(~base[1])[0][:3]] = True
    records = [record("dense", 0.0, 0, base), record("magnitude", 0.9, 0, base), record("other", 0.9, 0, better)]
    paired = Bootstrap(records, n_boot=1000)
    diff = paired.metric("other", 0.9, "accuracy") - paired.metric("magnitude", 0.9, "accuracy")
    assert diff.value == pytest.approx(0.006) and diff.interval()[0] > 0 and diff.p_two_sided() < 0.05
    for r in records:
        del r["correct"]
    unpaired = Bootstrap(records, n_boot=1000)
    diff = unpaired.metric("other", 0.9, "accuracy") - unpaired.metric("magnitude", 0.9, "accuracy")
    assert diff.interval()[0] < 0 < diff.interval()[1]


def test_non_inferiority_is_one_sided_with_a_margin():
    """A model 0.2 point below another (paired, 2,000 samples) is shown within 1 point, not within 0.1."""
    rng = np.random.default_rng(3)
    base = [rng.random(1000) < 0.85, rng.random(1000) < 0.85]
    worse = [c.copy() for c in base]
    for c in worse:
        c[np.nonzero(c)[0][:2]] = False
    boot = Bootstrap([record("dense", 0.0, 0, base), record("magnitude", 0.9, 0, base),
                      record("m", 0.9, 0, worse)], n_boot=1000)
    diff = boot.metric("m", 0.9, "accuracy") - boot.metric("magnitude", 0.9, "accuracy")
    assert diff.value == pytest.approx(-0.002)
    assert diff.p_non_inferior(0.01) < 0.05 and diff.p_non_inferior(0.001) > 0.5


def test_worst_excess_drop_and_group_change_match_hand_computation():
    base = [np.array([1] * 8 + [0] * 2, bool), np.array([1] * 6 + [0] * 4, bool)]  # 0.8, 0.6; overall 0.7
    pruned = [np.array([1] * 8 + [0] * 2, bool), np.array([1] * 3 + [0] * 7, bool)]  # 0.8, 0.3; overall 0.55
    boot = Bootstrap([record("dense", 0.0, 0, base), record("m", 0.9, 0, pruned)], n_boot=200)
    # psi_b = (0.6 - 0.3) - (0.7 - 0.55) = 0.15; psi_a = 0 - 0.15
    assert boot.metric("m", 0.9, "worst_excess_drop").value == pytest.approx(0.15)
    assert boot.metric("m", 0.9, "group_change", "b").value == pytest.approx(-0.3)
    assert boot.metric("m", 0.9, "best_group_change").value == pytest.approx(0.0)
    assert boot.metric("m", 0.9, "accuracy_gap").value == pytest.approx(0.5)


def test_holm_on_a_hand_example():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.02, 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_smallest_detectable_difference_is_the_largest_over_groups():
    """Group b: p = 0.8, n = 100 -> d solves 2.8016 * sqrt((0.16 + (0.8 - d)(0.2 + d)) / 100) = d, about
    0.165; group a (p = 1, n = 400) -> d = z^2 / (n + z^2), about 0.019. Not 0 where p = 1."""
    base = [np.ones(400, bool), np.array([1] * 80 + [0] * 20, bool)]
    group, difference = Bootstrap([record("dense", 0.0, 0, base)], n_boot=50).smallest_detectable_difference()
    z = 2.8016
    assert group == "b"
    assert z * np.sqrt((0.16 + (0.8 - difference) * (0.2 + difference)) / 100) == pytest.approx(difference, rel=1e-3)
    only_a = Bootstrap([record("dense", 0.0, 0, [np.ones(400, bool), np.ones(400, bool)])], n_boot=50)
    assert only_a.smallest_detectable_difference()[1] == pytest.approx(z ** 2 / (400 + z ** 2), rel=1e-3)
