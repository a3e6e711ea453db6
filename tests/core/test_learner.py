import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dus_gym.core.config import LearnerConfig
from dus_gym.core.learner import Learner
from dus_gym.tasks import make_task


@pytest.fixture(scope="module")
def mfeat():
    return make_task("mfeat", pix_encoder="mlp", hidden_dim=32)


@pytest.fixture(scope="module")
def mfeat_cnn():
    return make_task("mfeat", hidden_dim=32)  # pix through the CNN: convolutions for channels_last


def hand_loss(learner, counts, scaled):
    """The loss of docs/method.md on the window the planner is about to give, from a copy of the model."""
    planner = copy.deepcopy(learner.planner)
    window = planner.plan(counts).window
    model, data = learner.model, learner.train_split
    y = data.labels
    total, feats = 0.0, {}
    for k, m in enumerate(learner.modalities):
        idx = window[: counts[k]]
        feats[m] = model.encoders[m](data.features[m][idx])
        w = counts[k] / learner.config.batch_size if scaled else 1.0
        total += w * F.cross_entropy(model.heads[m](feats[m]), y[idx]).item()
    n = min(counts)
    fused = model.fusion(torch.cat([feats[m][:n] for m in learner.modalities], 1))
    return total + F.cross_entropy(fused, y[window[:n]]).item()


@pytest.mark.parametrize("scaled", [True, False])
def test_iteration_loss_follows_the_batch_plan(mfeat, scaled):
    config = LearnerConfig(batch_size=16, unimodal_loss="scaled" if scaled else "mean")
    learner = Learner(mfeat, config, seed=1)
    for counts in ([8, 24], [30, 5], [16, 16]):
        expected = hand_loss(learner, counts, scaled)
        stats = learner.step(counts)
        assert stats.loss == pytest.approx(expected, rel=1e-5)
    assert learner.samples_seen.tolist() == [54, 45]
    assert learner.planner.cursor == 24 + 30 + 16


def test_zero_count_trains_one_modality_alone(mfeat):
    # a large weight decay, so that decay on a parameter would show far above float noise
    learner = Learner(mfeat, LearnerConfig(batch_size=16, weight_decay=0.5), seed=0)
    before = copy.deepcopy(learner.model.state_dict())
    stats = learner.step([16, 0])
    assert np.isnan(stats.fusion_loss) and np.isnan(stats.status[1]) and not np.isnan(stats.status[0])
    after = learner.model.state_dict()
    # no loss reaches fou's encoder and head or the fusion head: they get no gradient, and torch.optim.SGD skips a
    # parameter without a gradient, weight decay included, so they are exactly unchanged
    for key in before:
        if key.startswith(("encoders.fou.", "heads.fou.", "fusion.")):
            assert torch.equal(after[key], before[key]), key
    # pix's parameters moved: by the gradient plus the decay 0.5 * lr * w (first step, momentum buffer = g + wd w)
    pix = learner.model.encoders["pix"].net[0].weight
    assert not torch.equal(pix, before["encoders.pix.net.0.weight"])
    assert learner.optimizer_steps == 1


def test_every_fusion_head_learns(mfeat):
    for fusion in ("sum", "gated", "film"):
        learner = Learner(mfeat, LearnerConfig(fusion=fusion), seed=0)
        for _ in range(100):
            learner.step([64, 64])
        assert learner.accuracies("val")[0] > 0.8, fusion


def test_balance_degree_of_the_shapley_values_by_hand():
    from dus_gym.core.metrics import balance_degree

    # balance = 1 - sum_{i<j} |phi_i - phi_j| / ((M - 1) sum_i phi_i)
    assert balance_degree({"a": 0.3, "b": 0.1}) == pytest.approx(0.5)  # 1 - 0.2 / 0.4
    assert balance_degree({"a": 0.2, "b": 0.2}) == pytest.approx(1.0)  # equal contributions
    assert balance_degree({"a": 0.4, "b": 0.0}) == pytest.approx(0.0)  # one modality carries it all
    assert balance_degree({"x": 0.3, "y": 0.2, "z": 0.1}) == pytest.approx(2 / 3)  # 1 - (0.1 + 0.2 + 0.1) / (2 x 0.6)
    assert balance_degree({"x": 0.6, "y": 0.0, "z": 0.0}) == pytest.approx(0.0)  # 1 - 1.2 / (2 x 0.6)
    assert balance_degree({"a": 0.5, "b": -0.1}) == pytest.approx(-0.5)  # a harmful modality: 1 - 0.6 / 0.4
    assert balance_degree({"a": 0.1, "b": -0.1}) is None  # no total contribution to share
    assert balance_degree({"a": 0.5}) is None


def test_shapley_values_of_the_modalities(mfeat):
    from dus_gym.core.metrics import shapley_values

    # two players: phi(a) = ((v(a) - v()) + (v(ab) - v(b))) / 2
    v = {frozenset(): 0.1, frozenset("a"): 0.5, frozenset("b"): 0.3, frozenset("ab"): 0.9}
    assert shapley_values(v.__getitem__, ["a", "b"]) == pytest.approx({"a": 0.5, "b": 0.3})
    # three players, v(S) = |S|^2: symmetric, so each gets v(all) / 3
    assert shapley_values(lambda s: len(s) ** 2, "xyz") == pytest.approx({"x": 3.0, "y": 3.0, "z": 3.0})
    learner = Learner(mfeat, LearnerConfig(), seed=0)
    for _ in range(60):
        learner.step([64, 64])
    phi = learner.modality_shapley("val")
    split = mfeat.splits["val"]
    x, y = split.features, split.labels

    def accuracy(**zeroed):  # the fused accuracy with the named modalities' inputs zeroed, written out
        with torch.no_grad():
            learner.model.eval()
            inputs = {m: torch.zeros_like(v) if zeroed.get(m) else v for m, v in x.items()}
            return float((learner.model(inputs)[1].argmax(1) == y).float().mean())

    v_all, v_none = accuracy(), accuracy(pix=True, fou=True)
    v_pix, v_fou = accuracy(fou=True), accuracy(pix=True)
    assert phi["pix"] == pytest.approx(((v_pix - v_none) + (v_all - v_fou)) / 2)
    assert phi["fou"] == pytest.approx(((v_fou - v_none) + (v_all - v_pix)) / 2)
    assert phi["pix"] > phi["fou"]  # the stronger view (98 % alone against 80 %) contributes more

def test_same_seed_same_run_other_seed_differs(mfeat):
    def run(seed):
        learner = Learner(mfeat, LearnerConfig(batch_size=32), seed=seed)
        return [learner.step([20, 40]).loss for _ in range(5)]
    assert run(3) == run(3)
    assert run(3) != run(4)


def test_probe_slice_is_held_out(mfeat):
    learner = Learner(mfeat, LearnerConfig(), seed=0, probe_size=200)
    assert learner.n_train == 1000 and len(learner.probe) == 200
    def rows(split):
        return {tuple(r) for r in torch.cat([split.features["pix"], split.features["fou"]], 1).numpy()}
    full = rows(mfeat.splits["train"])
    assert len(full) >= 1195  # nearly every training digit distinct (a few pix-fou duplicates exist)
    assert len(rows(learner.probe) & rows(learner.train_split)) <= 1200 - len(full)
    assert rows(learner.probe) | rows(learner.train_split) == full
    status = learner.probe_status()
    assert status.shape == (2,) and np.all((status > 0) & (status < 1))


def test_state_dict_round_trip(mfeat):
    a = Learner(mfeat, LearnerConfig(batch_size=32), seed=0)
    for _ in range(3):
        a.step([10, 40])
    b = Learner(mfeat, LearnerConfig(batch_size=32), seed=7)
    assert not torch.equal(a.model.fusion.weight, b.model.fusion.weight)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    assert [a.step([40, 10]).loss for _ in range(3)] == [b.step([40, 10]).loss for _ in range(3)]


def test_bad_counts_and_device(mfeat):
    learner = Learner(mfeat, LearnerConfig(), seed=0)
    with pytest.raises(ValueError, match="2 entries"):
        learner.step([64, 64, 64])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            Learner(mfeat, LearnerConfig(device="cuda"), seed=0)


def test_counts_are_quantised_up_to_the_configured_sizes(mfeat_cnn):
    learner = Learner(mfeat_cnn, LearnerConfig(batch_size=32, count_sizes=(16, 32, 64)), seed=0)
    assert learner.quantize([1, 17]).tolist() == [16, 32]
    assert learner.quantize([64, 200]).tolist() == [64, 64]
    assert learner.quantize([0, 33]).tolist() == [0, 64]
    stats = learner.step([10, 40])
    assert stats.counts.tolist() == [16, 64] and learner.samples_seen.tolist() == [16, 64]
    assert Learner(mfeat_cnn, LearnerConfig(), seed=0).quantize([13, 77]).tolist() == [13, 77]


def test_bf16_and_channels_last_learn_like_fp32(mfeat_cnn):
    def final_accuracy(**options):
        learner = Learner(mfeat_cnn, LearnerConfig(**options), seed=0)
        for _ in range(60):
            stats = learner.step([64, 64])
        return learner.accuracies("val")[0], stats, learner

    fp32, _, _ = final_accuracy()
    bf16, stats, learner = final_accuracy(precision="bf16", channels_last=True)
    assert learner.model.encoders["pix"].conv[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert stats.finite and abs(bf16 - fp32) < 0.05 and bf16 > 0.8


def test_step_decay_of_the_learning_rate(mfeat_cnn):
    learner = Learner(mfeat_cnn, LearnerConfig(lr=0.1, lr_decay_every=3, lr_decay_gamma=0.5), seed=0)
    rates = []
    for _ in range(7):
        learner.step([8, 8])
        rates.append(learner.optimizer.param_groups[0]["lr"])
    assert rates == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025])
    restored = Learner(mfeat_cnn, LearnerConfig(lr=0.1, lr_decay_every=3, lr_decay_gamma=0.5), seed=1)
    restored.load_state_dict(learner.state_dict())
    restored.step([8, 8])
    assert restored.optimizer.param_groups[0]["lr"] == pytest.approx(0.025)


def test_compiled_encoders_do_not_recompile_in_the_steady_state(mfeat_cnn):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    learner = Learner(mfeat_cnn, LearnerConfig(batch_size=32, compile=True, compile_backend="eager",
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
