"""The two learner backends behind one interface: N separate learners and the batched learner agree."""

import numpy as np
import pytest

from dus_gym.core.backend import LearnerBackend
from dus_gym.core.batched_learner import BatchedLearner
from dus_gym.core.config import LearnerConfig
from dus_gym.core.learner import LearnerGroup
from dus_gym.tasks import make_task

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def task():
    return make_task("synthetic", n_samples=300, dominant_dim=32, weak_dim=8, hidden_dim=16)


def _backends(task, config, n, probe_size=0) -> list[LearnerBackend]:
    backends = [LearnerGroup(task, config, n, probe_size=probe_size), BatchedLearner(task, config, n, probe_size)]
    for backend in backends:
        for i in range(n):
            backend.reset_learner(i, seed=10 + i)
    return backends


@pytest.mark.parametrize("config, probe_size", [
    (LearnerConfig(batch_size=16), 0),
    (LearnerConfig(batch_size=16, lr_decay_every=2, count_sizes=(8, 16, 32)), 40),
])
def test_same_seeds_and_counts_same_iterations(task, config, probe_size):
    separate, batched = _backends(task, config, 3, probe_size)
    rng = np.random.default_rng(0)
    for _ in range(4):
        counts = rng.integers(1, 40, size=(3, 2))
        active = np.array([True, True, False]) if _ == 2 else None
        a, b = separate.step(counts, active), batched.step(counts, active)
        for name in ("loss", "fusion_loss", "unimodal_losses", "status"):
            np.testing.assert_allclose(getattr(b, name), getattr(a, name), atol=1e-5, err_msg=name)
        assert b.counts.tolist() == a.counts.tolist() and b.active.tolist() == a.active.tolist()
    assert batched.iteration.tolist() == separate.iteration.tolist() == [4, 4, 3]
    for x, y in zip(separate.accuracies("val"), batched.accuracies("val"), strict=True):
        np.testing.assert_allclose(y, x)
    if probe_size:
        np.testing.assert_allclose(batched.probe_status(), separate.probe_status(), atol=1e-5)


def test_a_modality_without_samples_is_left_alone_as_torch_sgd_leaves_it(task):
    """With a count of 0, torch.optim.SGD skips the parameters without a gradient (no decay, no momentum).

    The batched learner once applied weight decay and momentum to their stacked zero gradients:
    0.0107 apart after three iterations with counts (16, 0).
    """
    config = LearnerConfig(batch_size=16, weight_decay=0.05, momentum=0.9)
    separate, batched = _backends(task, config, 3)
    schedule = [np.array([[16, 16], [16, 0], [0, 16]]), np.array([[16, 0], [16, 0], [16, 16]]),
                np.array([[16, 0], [16, 16], [0, 16]])]
    for counts in schedule:
        separate.step(counts)
        batched.step(counts)
    for i in range(3):
        single = separate.learner(i).model.state_dict()
        stacked = batched.learner_state(i)
        worst = max(float((stacked[k] - v).abs().max()) for k, v in single.items())
        assert worst < 1e-5, (i, worst)
