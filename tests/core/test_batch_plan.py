import pytest
import torch

from dus_gym.core.batch_plan import BatchPlanner


def make(n=10, seed=0):
    return BatchPlanner(n, torch.Generator().manual_seed(seed))


def test_window_prefixes_and_cursor():
    planner = make(10)
    order = planner.order.clone()
    plan = planner.plan([3, 5])
    assert torch.equal(plan.window, order[:5])
    assert torch.equal(plan.modality_indices(0), order[:3])
    assert torch.equal(plan.modality_indices(1), order[:5])
    assert plan.n_paired == 3 and torch.equal(plan.paired_indices, order[:3])
    assert planner.cursor == 5
    plan = planner.plan([4, 2])
    assert torch.equal(plan.modality_indices(0), order[5:9])
    assert torch.equal(plan.modality_indices(1), order[5:7])
    assert planner.cursor == 9


def test_window_crosses_epoch_into_fresh_shuffle():
    planner = make(10)
    first = planner.order.clone()
    planner.plan([8, 8])
    plan = planner.plan([5, 1])
    second = planner.order
    assert torch.equal(plan.window, torch.cat([first[8:], second[:3]]))
    assert planner.epoch == 1 and planner.cursor == 3
    assert planner.epochs_done == pytest.approx(1.3)
    assert sorted(second.tolist()) == list(range(10))


def test_every_sample_once_per_epoch_with_varying_counts():
    planner = make(97, seed=3)
    seen = []
    for k in range(200):
        plan = planner.plan([1 + k % 7, 1 + (k * 3) % 11])
        seen.extend(plan.window.tolist())
        if planner.epoch == 2:
            break
    assert sorted(seen[:97]) == list(range(97))
    assert sorted(seen[97:194]) == list(range(97))


def test_zero_count_modality_and_bad_counts():
    planner = make(10)
    plan = planner.plan([4, 0])
    assert plan.n_paired == 0 and len(plan.modality_indices(1)) == 0
    for bad in ([0, 0], [-1, 3], []):
        with pytest.raises(ValueError):
            planner.plan(bad)


def test_state_dict_resumes_the_same_walk():
    a = make(13, seed=5)
    a.plan([9, 4])
    state = a.state_dict()
    expected = [a.plan([6, 7]).window.tolist() for _ in range(5)]
    b = make(13, seed=99)
    b.load_state_dict(state)
    assert [b.plan([6, 7]).window.tolist() for _ in range(5)] == expected
