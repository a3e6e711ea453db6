"""Actions to counts: box, multidiscrete, allocation (M x B exactly) and strength, and back."""

import numpy as np
import pytest

from dus_gym.samplers import make_sampler
from dus_gym.samplers.action import ActionError, CountsAction, allocate, heuristic_weights
from dus_gym.samplers.base import SamplerState


def test_action_mappings():
    box = CountsAction(2, n_min=8, n_max=256)
    assert box.to_counts([-1, 1]).tolist() == [8, 256]
    assert box.to_counts([0, -0.5]).tolist() == [132, 70]
    levels = CountsAction(2, action_type="multidiscrete", count_levels=(16, 64, 128))
    assert levels.to_counts([0, 2]).tolist() == [16, 128]
    with pytest.raises(ValueError, match="level index"):
        levels.to_counts([3, 0])
    with pytest.raises(ValueError):
        CountsAction(2, n_min=0)


def test_allocation_spends_exactly_m_times_b():
    assert allocate([1, 1], 128, 8).tolist() == [64, 64]
    assert allocate([0.0, 1.0], 128, 8).tolist() == [8, 120]
    assert allocate([1, 1, 1], 100, 4).tolist() == [34, 33, 33]  # the remainder goes by largest share, ties first
    rng = np.random.default_rng(0)
    for _ in range(200):
        w, M = rng.dirichlet(np.ones(3)), 3
        counts = allocate(w, M * 32, 4)
        assert counts.sum() == 96 and counts.min() >= 4
    with pytest.raises(ValueError, match="n_min"):
        allocate([1, 1], 10, 8)
    action = CountsAction(2, n_min=8, action_type="allocation", batch_size=64, temperature=3.0, n_slots=3)
    assert action.space.shape == (3,)
    assert action.to_counts([0.0, 0.0, 0.7]).tolist() == [64, 64]  # the third slot is padding: ignored
    w = np.exp(3.0 * np.array([-1.0, 1.0]))
    assert action.to_counts([-1.0, 1.0, 0.0]).tolist() == allocate(w, 128, 8).tolist()
    assert action.max_count == 120


def test_strength_action_is_the_heuristic_at_its_alpha():
    action = CountsAction(3, n_min=4, action_type="strength", batch_size=32, max_alpha=60.0, n_slots=3)
    assert action.space.shape == (1,) and action.reacts and action.max_count == 96 - 2 * 4
    d = np.array([0.2, -0.15, -0.05])
    assert action.to_counts([-1.0], d).tolist() == [32, 32, 32]  # alpha 0: uniform
    assert action.alpha([0.0]) == pytest.approx(30.0) and action.alpha([1.0]) == pytest.approx(60.0)
    counts = action.to_counts([0.0], d)
    assert counts.tolist() == allocate(heuristic_weights(d, 30.0), 96, 4).tolist()
    assert counts.sum() == 96 and counts[0] < counts[2] < counts[1]  # the modality ahead gets the fewest
    heuristic = make_sampler("heuristic", 32, 3, alpha=30.0, n_min=4, allocation=True)
    state = SamplerState(5, 100, 32, d + 0.5, d, d, counts, np.zeros(1, np.float32))
    assert heuristic.counts(state).tolist() == counts.tolist()
    for bad in ([0.0, 0.0], [np.nan], [1.5]):
        with pytest.raises(ActionError):
            action.to_counts(bad, d)
    with pytest.raises(ValueError, match="strength action chooses the heuristic's alpha"):
        action.to_action([32, 32, 32])


def test_strength_counts_of_many_episodes_are_each_episodes_own():
    # the vectorised env's path (one call for N episodes) gives what to_counts gives episode by episode,
    # ties of the largest-remainder rounding included (equal d: equal remainders)
    action = CountsAction(3, n_min=4, action_type="strength", batch_size=32, max_alpha=60.0, n_slots=3)
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, size=(64, 1))
    d = np.concatenate([rng.uniform(-0.3, 0.3, size=(60, 3)), np.zeros((4, 3))])
    d[:8] = np.round(d[:8], 1)
    alphas = np.array([action.alpha(a) for a in actions])
    many = action.strength_counts(alphas, d)
    assert many.tolist() == [action.to_counts(a, row).tolist() for a, row in zip(actions, d, strict=True)]
    assert (many.sum(1) == 96).all() and many.min() >= 4
    assert allocate(np.ones((2, 3)), 10, 1).tolist() == [[4, 3, 3], [4, 3, 3]]  # ties to the first modality
    with pytest.raises(ValueError, match="finite discrepancies"):
        action.strength_counts(alphas[:1], np.array([[np.nan, 0.0, 0.0]]))


def test_to_action_inverts_to_counts():
    box = CountsAction(2)
    for n in range(8, 257):
        assert box.to_counts(box.to_action([n, 264 - n])).tolist() == [n, 264 - n]
    assert box.to_action([300, 0]).tolist() == [1.0, -1.0]  # out of range: the nearest action
    multi = CountsAction(2, action_type="multidiscrete")
    for level in multi.count_levels:
        assert multi.to_counts(multi.to_action([level, 8])).tolist() == [level, 8]
    assert multi.to_action([100, 20]).tolist() == [4, 1]  # nearest levels 128 and 16
    alloc = CountsAction(3, action_type="allocation", n_slots=4)
    for weights in ([1, 1, 1], [1, 3, 6], [0.2, 0.1, 0.7]):
        counts = allocate(weights, alloc.total, alloc.n_min)
        action = alloc.to_action(counts)
        assert action.shape == (4,) and action[3] == 0 and action.max() == pytest.approx(1.0)
        assert alloc.to_counts(action).tolist() == counts.tolist()
