"""IQM, stratified bootstrap and probability of improvement: hand computations, and rliable's numbers."""

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
