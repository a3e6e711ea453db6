import numpy as np
import pytest

from dus_gym.samplers import SamplerState, make_sampler
from dus_gym.samplers.rules import ConstantSampler, HeuristicSampler, UniformSampler


def state(d, iteration=10, counts=(64, 64)):
    d = np.asarray(d, dtype=np.float64)
    return SamplerState(iteration, 100, 64, d + 0.5, d, d + 0.5, np.asarray(counts), np.zeros(4 * len(d) + 1))


def test_uniform_gives_b_each():
    assert UniformSampler(64, 3).counts(state([0.1, 0.0, -0.1])).tolist() == [64, 64, 64]


def test_heuristic_formula_by_hand():
    sampler = HeuristicSampler(64, 2, alpha=10.0, n_min=8, n_max=256)
    d = np.array([0.05, -0.05])
    w = np.exp(-10 * d) / np.exp(-10 * d).sum()
    expected = np.clip(np.rint(2 * 64 * w), 8, 256)
    got = sampler.counts(state(d))
    assert got.tolist() == expected.astype(int).tolist()
    assert got[0] < 64 < got[1]  # the modality ahead gets fewer samples


def test_heuristic_zero_discrepancy_gives_b_and_clips():
    sampler = HeuristicSampler(64, 3, alpha=10.0, n_min=16, n_max=100)
    assert sampler.counts(state([0.0, 0.0, 0.0])).tolist() == [64, 64, 64]
    assert sampler.counts(state([0.5, -0.25, -0.25])).tolist() == [16, 96, 96]
    extreme = HeuristicSampler(64, 2, alpha=100.0, n_min=16, n_max=100).counts(state([0.5, -0.5]))
    assert extreme.tolist() == [16, 100]


def test_heuristic_warmup_and_alpha_zero():
    sampler = HeuristicSampler(64, 2, alpha=50.0, warmup=20)
    assert sampler.counts(state([0.3, -0.3], iteration=19)).tolist() == [64, 64]
    assert sampler.counts(state([0.3, -0.3], iteration=20))[0] < 64
    assert HeuristicSampler(64, 2, alpha=0.0).counts(state([0.3, -0.3])).tolist() == [64, 64]


@pytest.mark.parametrize("kwargs", [dict(alpha=-1.0), dict(alpha=1e3), dict(n_min=0), dict(n_min=50, n_max=10),
                                    dict(warmup=-1)])
def test_heuristic_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        HeuristicSampler(64, 2, **kwargs)


def test_constant_and_registry():
    assert ConstantSampler(64, 2, counts=[64, 0]).counts(state([0.0, 0.0])).tolist() == [64, 0]
    with pytest.raises(ValueError):
        ConstantSampler(64, 2, counts=[0, 0])
    assert isinstance(make_sampler("heuristic", 64, 2, alpha=3.0), HeuristicSampler)
    with pytest.raises(ValueError, match="did you mean 'heuristic'"):
        make_sampler("heuristc", 64, 2)
    with pytest.raises(ValueError, match="bad arguments"):
        make_sampler("uniform", 64, 2, alpha=3.0)
