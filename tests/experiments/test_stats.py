"""IQM, stratified bootstrap and probability of improvement (hand computations, and rliable's numbers);
t intervals, late fusion and instance-clustered intervals by hand."""

import numpy as np
import pytest

from dus_gym.experiments.stats import aggregate_scores, format_aggregates


def test_iqm_and_improvement_by_hand():
    # 8 runs of one task: the IQM is the mean of the middle four sorted values
    a = np.array([0.0, 10.0, 1.0, 2.0, 3.0, 4.0, -5.0, 100.0])
    # x beats y: pairs (x, y) over x in {1, 2, 3}, y in {0, 2, 4}: wins 1>0, 2>0, 3>0, 3>2 = 4, ties 2=2 = 1
    x, y = np.array([1.0, 2.0, 3.0]), np.array([0.0, 2.0, 4.0])
    out = aggregate_scores({"a": a, "x": x, "y": y}, reference="y", reps=200)
    assert out["a"].iqm == pytest.approx((1 + 2 + 3 + 4) / 4)
    assert out["x"].improvement == pytest.approx((4 + 0.5 * 1) / 9)
    assert out["y"].improvement is None and out["a"].improvement is not None
    lo, hi = out["x"].improvement_interval
    assert 0.0 <= lo <= out["x"].improvement <= hi <= 1.0
    # two tasks: the probability of improvement is the mean of the per-task ones
    zeros, ones = np.zeros(3), np.ones(3)  # task 1: x always loses
    two = aggregate_scores({"x": np.stack([x, zeros], 1), "y": np.stack([y, ones], 1)}, reference="y", reps=10)
    assert two["x"].improvement == pytest.approx(((4 + 0.5) / 9 + 0.0) / 2)


def test_bootstrap_is_stratified_and_seeded():
    # task 0 always scores 0, task 1 always 1: a resample within each task keeps one half 0 and one half 1,
    # so the IQM (the middle half: two 0s and two 1s of 4 + 4) is 0.5 in every resample; pooling the runs
    # of both tasks would not keep it
    scores = np.array([[0.0, 1.0]] * 4)
    out = aggregate_scores({"m": scores}, reference=None, reps=500)["m"]
    assert out.iqm == 0.5 and out.iqm_interval == (0.5, 0.5)
    rng = np.random.default_rng(1)
    noisy = {"u": rng.normal(0.7, 0.05, 10), "h": rng.normal(0.8, 0.05, 10)}
    first, again = aggregate_scores(noisy, "u", seed=3), aggregate_scores(noisy, "u", seed=3)
    assert first == again
    assert first["h"].improvement > 0.8 and first["h"].iqm_interval[0] > first["u"].iqm_interval[0]


def test_bad_scores_are_refused():
    with pytest.raises(ValueError, match="same tasks"):
        aggregate_scores({"a": np.zeros((3, 2)), "b": np.zeros((3, 1))})
    with pytest.raises(ValueError, match="finite"):
        aggregate_scores({"a": [0.5, float("nan")]})
    with pytest.raises(ValueError, match="non-empty"):
        aggregate_scores({"a": []})


def test_table():
    out = aggregate_scores({"uniform": [0.5, 0.6, 0.7], "heuristic": [0.8, 0.9, 0.85]}, reps=100)
    text = format_aggregates(out)
    assert "| heuristic | 85.0 [" in text and "| uniform | 60.0 [" in text and "1.00 [1.00, 1.00]" in text


def test_against_rliable():
    library = pytest.importorskip("rliable.library", reason="rliable (the test extra) is not installed")
    from rliable import metrics

    rng = np.random.default_rng(0)
    scores = {"u": rng.normal(0.6, 0.1, (12, 3)), "h": rng.normal(0.65, 0.1, (12, 3))}
    ours = aggregate_scores(scores, reference="u", reps=2000, seed=0)
    assert ours["h"].iqm == pytest.approx(metrics.aggregate_iqm(scores["h"]), abs=1e-12)
    assert ours["h"].improvement == pytest.approx(metrics.probability_of_improvement(scores["h"], scores["u"]),
                                                  abs=1e-12)
    with pytest.warns(FutureWarning):  # arch: rliable still passes a RandomState
        _, iqm_ci = library.get_interval_estimates(scores, lambda x: np.array([metrics.aggregate_iqm(x)]),
                                                   reps=2000, random_state=np.random.RandomState(0))
        _, poi_ci = library.get_interval_estimates({"h": [scores["h"], scores["u"]]},
                                                   metrics.probability_of_improvement, reps=2000,
                                                   random_state=np.random.RandomState(0))
    for name in scores:  # Monte-Carlo intervals: equal up to the resampling noise
        np.testing.assert_allclose(ours[name].iqm_interval, np.ravel(iqm_ci[name]), atol=0.01)
    # rliable draws the same run indices for both samplers, here each is resampled alone: close, not equal
    np.testing.assert_allclose(ours["h"].improvement_interval, np.ravel(poi_ci["h"]), atol=0.04)


def test_interval_and_late_fusion_arithmetic_by_hand():
    from dus_gym.experiments.stats import late_fusion_accuracy, mean_interval, paired_interval

    # 1..5: mean 3, sd sqrt(2.5), t(0.975, 4) = 2.7764451: half-width 2.7764451 * sqrt(2.5) / sqrt(5)
    mean, lo, hi = mean_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    half = 2.7764451 * (2.5**0.5) / 5**0.5
    assert (mean, lo, hi) == pytest.approx((3.0, 3.0 - half, 3.0 + half), abs=1e-6)
    # paired: differences (0.1, 0.3, 0.2): mean 0.2, sd 0.1, t(0.975, 2) = 4.3026527
    d, lo, hi = paired_interval([0.6, 0.8, 0.9], [0.5, 0.5, 0.7])
    assert (d, lo, hi) == pytest.approx((0.2, 0.2 - 4.3026527 * 0.1 / 3**0.5, 0.2 + 4.3026527 * 0.1 / 3**0.5))
    assert all(x != x for x in mean_interval([0.4])[1:])  # one value: no interval (nan bounds)
    # late fusion: argmax of the summed log-probabilities; sample 2 is decided by the confident second model
    p_a = np.array([[0.6, 0.4], [0.55, 0.45], [0.2, 0.8]])
    p_b = np.array([[0.7, 0.3], [0.1, 0.9], [0.5, 0.5]])
    # sums of logs: [-0.87, -2.12] -> 0; [-2.90, -0.90] -> 1; [-2.30, -0.92] -> 1 (wrong: the label is 0)
    assert late_fusion_accuracy([p_a, p_b], np.array([0, 1, 0])) == pytest.approx(2 / 3)


def test_instance_clustered_intervals_take_the_instance_as_the_unit():
    from scipy import stats

    from dus_gym.experiments.stats import clustered_difference, two_level_aggregates

    values = {0: [0.8, 0.9, 1.0], 1: [0.5, 0.5, 0.5], 2: [0.7, 0.6, 0.8], 3: [0.9, 0.9, 0.9]}
    reference = {0: [0.7, 0.7, 0.7], 1: [0.5, 0.4, 0.6], 2: [0.6, 0.6, 0.6], 3: [0.85, 0.85, 0.85]}
    d = np.array([0.2, 0.0, 0.1, 0.05])  # per-instance mean differences, by hand
    half = stats.t.ppf(0.975, 3) * d.std(ddof=1) / 2  # df = instances - 1 = 3, not cases - 1 = 11
    mean, lo, hi = clustered_difference(values, reference)
    assert mean == pytest.approx(d.mean()) and (lo, hi) == pytest.approx((d.mean() - half, d.mean() + half))
    rng = np.random.default_rng(0)
    base = rng.normal(0, 1, (3, 30))
    agg = two_level_aggregates({"uniform": base, "better": base + 1.0}, reps=500)
    assert agg["better"].iqm == pytest.approx(agg["uniform"].iqm + 1.0)
    assert agg["better"].improvement > 0.7 and agg["better"].iqm_interval[0] < agg["better"].iqm
    one = two_level_aggregates({"uniform": base[:, :1].repeat(30, 1)}, reps=200)  # no spread between instances
    spread = two_level_aggregates({"uniform": base}, reps=200)
    assert np.diff(one["uniform"].iqm_interval)[0] < np.diff(spread["uniform"].iqm_interval)[0]


def test_a_difference_of_one_pair_says_it_has_no_interval():
    from dus_gym.experiments.stats import format_difference, format_paired

    assert format_paired([0.61], [0.58]) == "+3.0 (one pair: no interval)"
    assert format_difference((0.03, 0.01, 0.05)) == "+3.0 [+1.0, +5.0]"
