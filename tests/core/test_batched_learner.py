"""The batched learner: each learner matches a separate one, on a shared task or on one task each; batch norm
with masked statistics."""

import numpy as np
import pytest
import torch

from dus_gym.core.batched_learner import (
    BatchedLearner,
    MaskedBatchNorm,
    check_equal_shapes,
    mask_batch_norms,
    task_shape_key,
)
from dus_gym.core.config import LearnerConfig
from dus_gym.core.learner import Learner
from dus_gym.core.task import MultimodalSplit, Task
from dus_gym.tasks import cached_task

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: one torch thread per module


def _task(data_seed, **kwargs):
    return cached_task("synthetic", **{"n_samples": 300, "hidden_dim": 16, "data_seed": data_seed, **kwargs})


def _assert_stats_match(stats, expected):
    np.testing.assert_allclose(stats.loss, [e.loss for e in expected], atol=1e-5)
    np.testing.assert_allclose(stats.fusion_loss, [e.fusion_loss for e in expected], atol=1e-5)
    np.testing.assert_allclose(stats.unimodal_losses, [e.unimodal_losses for e in expected], atol=1e-5)
    np.testing.assert_allclose(stats.status, [e.status for e in expected], atol=1e-5)


def _assert_scores_match(batched, singles, split):
    fused, per_modality, status = batched.scores(split)
    for i, single in enumerate(singles):
        fused_i, per_modality_i, status_i = single.scores(split)
        assert fused[i] == pytest.approx(fused_i, abs=1e-5)
        np.testing.assert_allclose(per_modality[i], list(per_modality_i.values()), atol=1e-5)
        np.testing.assert_allclose(status[i], status_i, atol=1e-5)


@pytest.mark.parametrize("probe_size", [0, 20])
def test_each_learner_matches_a_separate_learner_on_its_own_task(probe_size):
    a, b, c, d = (_task(s) for s in (1, 2, 3, 4))
    tasks, seeds = [a, b, a, c], [5, 6, 7, 8]  # a twice: one copy of its data, two learners
    config = LearnerConfig(batch_size=16, lr=0.05, momentum=0.9, lr_decay_every=3)
    singles = [Learner(t, config, seed=s, probe_size=probe_size) for t, s in zip(tasks, seeds, strict=True)]
    batched = BatchedLearner(a, config, len(tasks), probe_size=probe_size, tasks=tasks)
    for i, s in enumerate(seeds):
        batched.reset_learner(i, s)
    assert len(batched.train_split) == 3 * len(a.splits["train"])  # a, b and c once each
    counts = np.array([[4, 16], [16, 2], [9, 9], [0, 12]])
    for _ in range(4):
        _assert_stats_match(batched.step(counts), [s.step(n) for s, n in zip(singles, counts, strict=True)])
    _assert_scores_match(batched, singles, "val")
    _assert_scores_match(batched, singles, "test")
    if probe_size:
        np.testing.assert_allclose(batched.probe_status(), [s.probe_status() for s in singles], atol=1e-5)
    for i, single in enumerate(singles):
        for key, value in single.model.state_dict().items():
            torch.testing.assert_close(batched.learner_state(i)[key], value, atol=1e-5, rtol=1e-5)

    # learner 1 moves to task d; the others go on where they were (their index maps follow their data)
    batched.reset_learner(1, 9, task=d)
    singles[1] = Learner(d, config, seed=9, probe_size=probe_size)
    assert batched.task_of(1) is d and batched.task_of(3) is c
    for _ in range(3):
        _assert_stats_match(batched.step(counts), [s.step(n) for s, n in zip(singles, counts, strict=True)])
    _assert_scores_match(batched, singles, "val")


def test_one_task_keeps_the_shared_data_path():
    a = _task(1)
    batched = BatchedLearner(a, LearnerConfig(batch_size=16), 3, tasks=[a, a, a])
    assert batched.tasks is None
    assert batched.train_split.features["weak"].data_ptr() == a.splits["train"].features["weak"].data_ptr()


def test_tasks_of_unequal_shapes_are_refused():
    a = _task(1)
    config = LearnerConfig(batch_size=16)
    assert task_shape_key(a) == task_shape_key(_task(2))
    with pytest.raises(ValueError, match=r"task 1 \('synthetic'\) differs in its modalities"):
        BatchedLearner(a, config, 2, tasks=[a, _task(2, n_weak=2)])
    with pytest.raises(ValueError, match="differs in its split sizes and feature shapes"):
        check_equal_shapes([a, _task(1, weak_dim=8)])
    with pytest.raises(ValueError, match="differs in its split sizes and feature shapes"):
        check_equal_shapes([a, _task(1, n_samples=400)])
    with pytest.raises(ValueError, match="differs in its encoder parameter shapes;"):
        check_equal_shapes([a, _task(1, hidden_dim=8)])
    batched = BatchedLearner(a, config, 2)
    with pytest.raises(ValueError, match="one task per learner"):
        batched.set_tasks([a])
    with pytest.raises(ValueError, match="differs in its modalities"):
        batched.reset_learner(0, 0, task=_task(2, n_weak=2))


class _BNEncoder(torch.nn.Module):
    def __init__(self, in_dim):
        super().__init__()
        self.out_dim = 8
        self.net = torch.nn.Sequential(torch.nn.Linear(in_dim, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU())

    def forward(self, x):
        return self.net(x)


def _bn_task():
    g = torch.Generator().manual_seed(0)
    def split(n):
        return MultimodalSplit({"a": torch.randn(n, 5, generator=g), "b": torch.randn(n, 3, generator=g)},
                               torch.arange(n) % 3)
    return Task("bn", ("a", "b"), 3, {"train": split(120), "val": split(30), "test": split(30)},
                {"a": lambda: _BNEncoder(5), "b": lambda: _BNEncoder(3)})


def test_batchnorm_uses_masked_statistics():
    task, config = _bn_task(), LearnerConfig(batch_size=16, lr=0.1)
    seeds = [0, 1, 2]
    singles = [Learner(task, config, seed=s) for s in seeds]
    batched = BatchedLearner(task, config, len(seeds))
    for i, s in enumerate(seeds):
        batched.reset_learner(i, s)
    assert all(isinstance(n, MaskedBatchNorm) for n in batched._masked_norms["a"])
    counts = np.array([[4, 16], [16, 2], [9, 9]])
    for _ in range(4):
        stats = batched.step(counts)
        expected = [single.step(c) for single, c in zip(singles, counts, strict=True)]
        np.testing.assert_allclose(stats.loss, [e.loss for e in expected], atol=1e-5)
    for i, single in enumerate(singles):
        state = batched.learner_state(i)
        for key, value in single.model.state_dict().items():
            torch.testing.assert_close(state[key], value, atol=1e-5, rtol=1e-5)
    fused, _ = batched.accuracies("val")
    np.testing.assert_allclose(fused, [s.accuracies("val")[0] for s in singles])


def test_masked_batchnorm_ignores_padded_rows():
    bn = torch.nn.BatchNorm1d(4)
    x = torch.randn(6, 4)
    (masked,) = mask_batch_norms(torch.nn.Sequential(torch.nn.BatchNorm1d(4)))
    masked.mask = torch.tensor([True, True, True, True, False, False])
    y = masked(torch.cat([x[:4], torch.full((2, 4), 1e3)]))
    torch.testing.assert_close(y[:4], bn(x[:4]))
    mean, var, tracked = masked.updated
    torch.testing.assert_close(mean, bn.running_mean)
    torch.testing.assert_close(var, bn.running_var)
    assert int(tracked) == 1
