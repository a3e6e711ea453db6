"""Property tests: the batch plan, the action-to-counts mapping and the CMD update, for any inputs."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dus_gym.core.batch_plan import BatchPlanner
from dus_gym.core.discrepancy import CMDMonitor
from dus_gym.samplers.action import ActionError, CountsAction

SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def walks(draw):
    """A training-set size and a sequence of per-modality counts (one positive at least, up to 3 epochs a window)."""
    n_train = draw(st.integers(1, 60))
    M = draw(st.integers(1, 3))
    count = st.integers(0, 3 * n_train)
    steps = draw(st.lists(st.lists(count, min_size=M, max_size=M).filter(lambda c: max(c) > 0), min_size=1,
                          max_size=25))
    return n_train, steps, draw(st.integers(0, 2**31 - 1))


@SETTINGS
@given(walks())
def test_batch_plan_counts_cursor_and_epoch_boundaries(walk):
    n_train, steps, seed = walk
    planner = BatchPlanner(n_train, torch.Generator().manual_seed(seed))
    consumed, stream = 0, []
    for counts in steps:
        plan = planner.plan(counts)
        assert len(plan.window) == max(counts)
        for k, n in enumerate(counts):  # each modality trains on the first n(m) of the window
            assert torch.equal(plan.modality_indices(k), plan.window[:n])
        assert plan.n_paired == min(counts) and torch.equal(plan.paired_indices, plan.window[: min(counts)])
        consumed += max(counts)
        assert (planner.epoch, planner.cursor) == divmod(consumed, n_train)  # the cursor advances by max n(m)
        assert planner.epochs_done == pytest.approx(consumed / n_train)
        assert ((plan.window >= 0) & (plan.window < n_train)).all()
        stream.append(plan.window)
    stream = torch.cat(stream)
    for e in range(consumed // n_train):  # every full epoch is a permutation: each sample exactly once
        assert sorted(stream[e * n_train : (e + 1) * n_train].tolist()) == list(range(n_train))
    tail = stream[(consumed // n_train) * n_train :].tolist()
    assert len(set(tail)) == len(tail)  # the epoch in progress repeats no sample


@SETTINGS
@given(walks(), st.integers(0, 24))
def test_batch_plan_state_dict_resumes_the_same_walk_at_any_point(walk, split):
    n_train, steps, seed = walk
    split = min(split, len(steps))
    a = BatchPlanner(n_train, torch.Generator().manual_seed(seed))
    for counts in steps[:split]:
        a.plan(counts)
    b = BatchPlanner(n_train, torch.Generator().manual_seed(seed + 1))
    b.load_state_dict(a.state_dict())
    for counts in steps[split:]:
        assert torch.equal(a.plan(counts).window, b.plan(counts).window)
    assert (a.epoch, a.cursor) == (b.epoch, b.cursor)


@SETTINGS
@given(st.integers(1, 50), st.lists(st.integers(-5, 5), min_size=0, max_size=3))
def test_batch_plan_rejects_negative_or_all_zero_counts(n_train, counts):
    planner = BatchPlanner(n_train, torch.Generator().manual_seed(0))
    if counts and min(counts) >= 0 and max(counts) >= 1:
        planner.plan(counts)
        return
    with pytest.raises(ValueError, match="non-negative"):
        planner.plan(counts)
    assert (planner.epoch, planner.cursor) == (0, 0)  # a refused plan consumes nothing


@st.composite
def box_actions(draw):
    M = draw(st.integers(1, 4))
    n_min = draw(st.integers(1, 300))
    n_max = draw(st.integers(n_min, 600))
    unit = st.floats(-1.0, 1.0, allow_nan=False, width=32)
    a = np.array(draw(st.lists(unit, min_size=M, max_size=M)), dtype=np.float32)
    b = np.array(draw(st.lists(unit, min_size=M, max_size=M)), dtype=np.float32)
    return CountsAction(M, n_min, n_max), a, b


@SETTINGS
@given(box_actions())
def test_box_action_maps_affinely_into_the_count_bounds_and_monotonically(case):
    actions, a, b = case
    counts = actions.to_counts(a)
    assert counts.dtype == np.int64 and counts.shape == (actions.n_modalities,)
    assert ((counts >= actions.n_min) & (counts <= actions.n_max)).all()
    expected = np.rint(actions.n_min + (a.astype(np.float64) + 1) / 2 * (actions.n_max - actions.n_min))
    assert (counts == expected).all()
    low, high = np.minimum(a, b), np.maximum(a, b)
    assert (actions.to_counts(low) <= actions.to_counts(high)).all()  # more action, never fewer samples
    M = actions.n_modalities
    assert (actions.to_counts(-np.ones(M)) == actions.n_min).all()
    assert (actions.to_counts(np.ones(M)) == actions.n_max).all()


@SETTINGS
@given(box_actions(), st.integers(0, 3), st.sampled_from([np.nan, np.inf, -np.inf, 1.5, -7.0]))
def test_box_action_with_nan_inf_or_out_of_range_entry_is_refused(case, position, bad):
    actions, a, _ = case
    a = a.astype(np.float64)
    a[position % actions.n_modalities] = bad
    with pytest.raises(ActionError, match="expected an action in Box"):
        actions.to_counts(a)


@SETTINGS
@given(st.lists(st.integers(1, 512), min_size=1, max_size=8, unique=True), st.integers(1, 4), st.data())
def test_multidiscrete_action_picks_the_levels(levels, M, data):
    actions = CountsAction(M, action_type="multidiscrete", count_levels=tuple(sorted(levels)))
    index = np.array(data.draw(st.lists(st.integers(0, len(levels) - 1), min_size=M, max_size=M)))
    assert actions.to_counts(index).tolist() == [sorted(levels)[i] for i in index]
    assert actions.space.contains(index.astype(np.int64))
    with pytest.raises(ActionError):
        actions.to_counts(np.full(M, len(levels)))


statuses = st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=2, max_size=4)


@SETTINGS
@given(st.integers(2, 4).flatmap(lambda M: st.lists(st.lists(st.floats(0.0, 1.0), min_size=M, max_size=M),
                                                      min_size=1, max_size=30)))
def test_cmd_running_mean_and_discrepancy(history):
    history = np.array(history)
    monitor = CMDMonitor(history.shape[1])
    for t, s in enumerate(history, start=1):
        d = monitor.update(s)
        assert monitor.t == t
        assert np.allclose(monitor.cumulative, history[:t].mean(0))  # c_t is the running mean of s
        assert np.allclose(d, monitor.cumulative - monitor.cumulative.mean()) and abs(d.sum()) < 1e-9
        assert (np.abs(d) <= 1 + 1e-12).all() and 0 <= monitor.gap <= 1 + 1e-12
        assert np.array_equal(monitor.status, s)


@SETTINGS
@given(st.integers(1, 6), st.integers(2, 3).flatmap(
    lambda M: st.lists(st.lists(st.floats(0.0, 1.0), min_size=M, max_size=M), min_size=1, max_size=30)))
def test_cmd_exponential_window_follows_its_formula(window, history):
    history = np.array(history)
    monitor = CMDMonitor(history.shape[1], window=window)
    previous = np.zeros(history.shape[1])
    for t, s in enumerate(history, start=1):
        monitor.update(s)
        rate = 1.0 / min(t, window)
        assert np.allclose(monitor.cumulative, (1 - rate) * previous + rate * s)
        assert (monitor.cumulative >= history[:t].min(0) - 1e-12).all()  # a mean: within the statuses seen
        assert (monitor.cumulative <= history[:t].max(0) + 1e-12).all()
        previous = monitor.cumulative.copy()


@SETTINGS
@given(statuses, st.integers(0, 3), st.sampled_from([np.nan, np.inf, -np.inf]))
def test_cmd_refuses_non_finite_status_and_keeps_its_state(status, position, bad):
    monitor = CMDMonitor(len(status))
    monitor.update(status)
    before = monitor.state_dict()
    broken = list(status)
    broken[position % len(status)] = bad
    with pytest.raises(ValueError, match="finite"):
        monitor.update(broken)
    assert monitor.state_dict() == before
    restored = CMDMonitor(len(status))
    restored.load_state_dict(before)
    assert np.array_equal(restored.discrepancy, monitor.discrepancy)
