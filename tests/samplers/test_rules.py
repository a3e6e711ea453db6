"""The rule samplers: uniform, the heuristic (its formula, allocation, reversal, validation source), constant
and schedule, and the sampler table."""

import numpy as np
import pytest

from dus_gym.samplers import SamplerState, make_sampler
from dus_gym.samplers.action import allocate
from dus_gym.samplers.rules import ConstantSampler, HeuristicSampler, ScheduleSampler, UniformSampler


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


def test_heuristic_allocation_splits_m_times_b_by_its_softmax():
    sampler = make_sampler("heuristic", 32, 3, alpha=10.0, n_min=4, allocation=True)
    d = np.array([0.1, -0.05, -0.05])
    state = SamplerState(50, 100, 32, d + 0.5, d, d, np.array([32, 32, 32]), np.zeros(13, np.float32))
    counts = sampler.counts(state)
    w = np.exp(-10 * d) / np.exp(-10 * d).sum()
    assert counts.sum() == 96 and counts.tolist() == allocate(w, 96, 4).tolist() and counts[0] < counts[1]


def test_reversed_heuristic_feeds_the_modality_ahead_and_val_source_reads_validation():
    d = np.array([0.1, -0.1])
    state = SamplerState(20, 100, 32, d + 0.5, d, d, np.array([32, 32]), np.zeros(1, np.float32),
                         val_status=np.array([0.3, 0.5]), val_acc=0.6)
    plain = make_sampler("heuristic", 32, 2, alpha=10.0, n_min=4, allocation=True)
    reverse = make_sampler("heuristic", 32, 2, alpha=10.0, n_min=4, allocation=True, reverse=True)
    assert plain.counts(state)[0] < 32 < reverse.counts(state)[0]
    assert plain.counts(state).tolist() == reverse.counts(state)[::-1].tolist()  # a mirror image for M = 2
    val = make_sampler("heuristic", 32, 2, alpha=10.0, n_min=4, allocation=True, source="val", val_every=20)
    assert val.validation_every == 20
    assert val.counts(state)[0] > 32  # on validation, modality 0 is behind: it gets more, whatever the train CMD
    with pytest.raises(ValueError, match="source"):
        make_sampler("heuristic", 32, 2, source="test")


def test_constant_and_registry():
    assert ConstantSampler(64, 2, counts=[64, 0]).counts(state([0.0, 0.0])).tolist() == [64, 0]
    with pytest.raises(ValueError):
        ConstantSampler(64, 2, counts=[0, 0])
    assert isinstance(make_sampler("heuristic", 64, 2, alpha=3.0), HeuristicSampler)
    with pytest.raises(ValueError, match="did you mean 'heuristic'"):
        make_sampler("heuristc", 64, 2)
    with pytest.raises(ValueError, match="bad arguments"):
        make_sampler("uniform", 64, 2, alpha=3.0)


def progress_state(iteration, n_iterations=100):
    return SamplerState(iteration, n_iterations, 64, np.zeros(2), np.zeros(2), np.zeros(2), np.array([64, 64]),
                        np.zeros(9, dtype=np.float32))


def test_schedule_replays_by_progress(tmp_path):
    sampler = ScheduleSampler(64, 2, schedule=[[8, 100], [16, 90], [32, 80], [64, 70]])
    assert [sampler.counts(progress_state(t)).tolist() for t in (0, 24, 25, 74, 99)] == \
        [[8, 100], [8, 100], [16, 90], [32, 80], [64, 70]]
    np.save(tmp_path / "counts.npy", np.array([[1, 2]] * 3))
    assert (make_sampler("schedule", 64, 2, schedule=str(tmp_path / "counts.npy"))
            .counts(progress_state(50)).tolist() == [1, 2])
    with pytest.raises(ValueError, match="table of counts"):
        ScheduleSampler(64, 2, schedule=[[1, 2, 3]])
    with pytest.raises(FileNotFoundError):
        ScheduleSampler(64, 2, schedule=str(tmp_path / "missing.npy"))
