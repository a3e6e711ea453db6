"""The GPU-speed options of the learner, checked on CPU: quantised counts, bf16, channels_last, compile."""

import numpy as np
import pytest
import torch

from dus_gym.core.config import LearnerConfig
from dus_gym.core.learner import Learner
from dus_gym.tasks import make_task


@pytest.fixture(scope="module")
def mfeat():
    return make_task("mfeat", hidden_dim=32)  # pix through the CNN: convolutions for channels_last


def test_counts_are_quantised_up_to_the_configured_sizes(mfeat):
    learner = Learner(mfeat, LearnerConfig(batch_size=32, count_sizes=(16, 32, 64)), seed=0)
    assert learner.quantize([1, 17]).tolist() == [16, 32]
    assert learner.quantize([64, 200]).tolist() == [64, 64]
    assert learner.quantize([0, 33]).tolist() == [0, 64]
    stats = learner.step([10, 40])
    assert stats.counts.tolist() == [16, 64] and learner.samples_seen.tolist() == [16, 64]
    assert Learner(mfeat, LearnerConfig(), seed=0).quantize([13, 77]).tolist() == [13, 77]


def test_bf16_and_channels_last_learn_like_fp32(mfeat):
    def final_accuracy(**options):
        learner = Learner(mfeat, LearnerConfig(**options), seed=0)
        for _ in range(60):
            stats = learner.step([64, 64])
        return learner.accuracies("val")[0], stats, learner

    fp32, _, _ = final_accuracy()
    bf16, stats, learner = final_accuracy(precision="bf16", channels_last=True)
    assert learner.model.encoders["pix"].conv[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert stats.finite and abs(bf16 - fp32) < 0.05 and bf16 > 0.8


def test_step_decay_of_the_learning_rate(mfeat):
    learner = Learner(mfeat, LearnerConfig(lr=0.1, lr_decay_every=3, lr_decay_gamma=0.5), seed=0)
    rates = []
    for _ in range(7):
        learner.step([8, 8])
        rates.append(learner.optimizer.param_groups[0]["lr"])
    assert rates == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025])
    restored = Learner(mfeat, LearnerConfig(lr=0.1, lr_decay_every=3, lr_decay_gamma=0.5), seed=1)
    restored.load_state_dict(learner.state_dict())
    restored.step([8, 8])
    assert restored.optimizer.param_groups[0]["lr"] == pytest.approx(0.025)


def test_compiled_encoders_do_not_recompile_in_the_steady_state(mfeat):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    learner = Learner(mfeat, LearnerConfig(batch_size=32, compile=True, compile_backend="eager",
                                           count_sizes=(16, 32, 64)), seed=0)
    rng = np.random.default_rng(0)

    def run(n):
        for _ in range(n):
            learner.step(rng.integers(1, 100, size=2))

    run(30)  # warm-up: every size of every modality has been seen
    compiled = counters["stats"]["unique_graphs"]
    run(40)
    assert counters["stats"]["unique_graphs"] == compiled
    assert 0 < compiled <= 2 * 3 * 2  # at most sizes x modalities (x a backward graph each)
    assert "_orig_mod" not in "".join(learner.state_dict()["model"])
