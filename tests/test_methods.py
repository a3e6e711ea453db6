"""The balancing methods: each formula on hand-made numbers, and each method inside a learner."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dus_gym.core.config import ConfigError, LearnerConfig
from dus_gym.core.learner import Learner
from dus_gym.core.methods import METHODS, IterationBatch, StepContext, make_method
from dus_gym.core.methods.mla import entropy_fusion, mla_projector_update
from dus_gym.core.methods.mmpareto import mmpareto_weights
from dus_gym.core.methods.ogm_ge import ogm_ge_coefficients
from dus_gym.tasks import make_task


@pytest.fixture(scope="module")
def task():
    return make_task("synthetic", n_samples=400, dominant_dim=32, weak_dim=8, hidden_dim=16)


def test_ogm_ge_coefficient_for_a_known_score_ratio():
    k = ogm_ge_coefficients(torch.tensor([30.0, 10.0]), alpha=0.8)
    # rho(a) = 3 > 1: k(a) = 1 - tanh(0.8 * 3); the modality behind keeps its gradient
    assert k.tolist() == pytest.approx([1 - math.tanh(2.4), 1.0], abs=1e-6)
    assert ogm_ge_coefficients(torch.tensor([5.0, 5.0]), 0.8).tolist() == [1.0, 1.0]
    # three modalities: rho(m) = s(m) / mean of the others
    k3 = ogm_ge_coefficients(torch.tensor([6.0, 2.0, 2.0]), 0.5)
    assert k3.tolist() == pytest.approx([1 - math.tanh(1.5), 1.0, 1.0], abs=1e-6)


def test_mmpareto_weights_without_and_with_conflict():
    assert mmpareto_weights(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])).tolist() == [0.5, 0.5]
    g_mm, g_u = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])  # cosine < 0
    a = mmpareto_weights(g_mm, g_u)
    assert a.tolist() == pytest.approx([0.6, 0.4])
    d = a[0] * g_mm + a[1] * g_u  # the min-norm point: orthogonal to the segment
    assert float(d @ (g_mm - g_u)) == pytest.approx(0.0, abs=1e-6)
    # one gradient inside the other's half-space opposite: the weight is clipped to [0, 1]
    assert mmpareto_weights(torch.tensor([1.0, 0.0]), torch.tensor([-3.0, 0.1])).tolist()[0] <= 1.0


def test_mla_projector_update_on_a_known_feature():
    p = mla_projector_update(torch.eye(2), torch.tensor([[1.0, 0.0], [1.0, 0.0]]), alpha=0.1)
    raw = np.diag([1 - 1 / 1.1, 1.0])
    assert p.numpy() == pytest.approx(raw / np.linalg.norm(raw), abs=1e-6)


def test_entropy_fusion_weights_the_certain_modality():
    fused = entropy_fusion({"a": torch.tensor([[30.0, 0.0]]), "b": torch.tensor([[0.0, 0.0]])})
    w = np.exp([0.0, -math.log(2)]) / np.exp([0.0, -math.log(2)]).sum()  # entropies 0 and ln 2
    assert fused[0].tolist() == pytest.approx((w[0] * np.array([1, 0]) + w[1] * np.array([0.5, 0.5])).tolist(),
                                              abs=1e-6)


def hand_batch(task, counts=(12, 20), B=16):
    split = task.splits["train"]
    n = min(counts)
    return IterationBatch(
        inputs={m: split.features[m][:c] for m, c in zip(task.modalities, counts, strict=True)},
        targets={m: split.labels[:c] for m, c in zip(task.modalities, counts, strict=True)},
        weights={m: c / B for m, c in zip(task.modalities, counts, strict=True)},
        n_paired=n, paired_target=split.labels[:n], epoch_fraction=0.0,
    )


def learner_of(task, method, **kwargs):
    config = LearnerConfig(batch_size=16, momentum=0.0, weight_decay=0.0, lr=0.1, method=method, method_kwargs=kwargs)
    return Learner(task, config, seed=3)


def context(learner):
    return StepContext(learner.model, dict(learner.model.encoders.items()), learner.optimizer, learner._autocast)


def plain_grads(model, loss, params):
    return [g if g is not None else torch.zeros_like(p)
            for g, p in zip(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True), params,
                            strict=True)]


def losses(model, task, batch):
    enc = {m: model.encoders[m](x) for m, x in batch.inputs.items()}
    uni = {m: F.cross_entropy(model.heads[m](enc[m]), batch.targets[m]) for m in enc}
    paired = torch.cat([enc[m][: batch.n_paired] for m in task.modalities], 1)
    return enc, uni, F.cross_entropy(model.fusion(paired), batch.paired_target)


def one_step(task, method, **kwargs):
    """A learner of ``method`` after one step on the hand-made batch, the model before it and its losses."""
    learner = learner_of(task, method, **kwargs)
    batch = hand_batch(task)
    reference = copy.deepcopy(learner.model)
    learner.method.step(context(learner), batch)
    return learner, batch, reference, losses(reference, task, batch)


def test_joint_encoders_see_the_fusion_loss_only(task):
    learner, batch, reference, (_, _, fusion) = one_step(task, "joint")
    for m in task.modalities:
        params = list(reference.encoders[m].parameters())
        for got, want in zip(learner.model.encoders[m].parameters(), plain_grads(reference, fusion, params),
                             strict=True):
            assert torch.allclose(got.grad, want, atol=1e-6)


def test_ogm_slows_the_leading_encoder_by_its_coefficient(task):
    learner, batch, reference, (enc, _, fusion) = one_step(task, "ogm-ge", ge=False)
    scores = learner.method.scores(reference, enc, batch.n_paired, batch.paired_target)
    k = ogm_ge_coefficients(scores, 0.8)
    assert k.min() < 1.0 and k.max() == 1.0  # one modality leads and is slowed
    for i, m in enumerate(task.modalities):
        params = list(reference.encoders[m].parameters())
        for p, got, want in zip(params, learner.model.encoders[m].parameters(), plain_grads(reference, fusion, params),
                                strict=True):
            scale = k[i] if p.dim() >= 2 else 1.0
            assert torch.allclose(got.grad, scale * want, atol=1e-6)


def test_ogm_ge_noise_has_the_gradient_spread(task):
    learner, batch, reference, (enc, _, fusion) = one_step(task, "ogm-ge")
    k = ogm_ge_coefficients(learner.method.scores(reference, enc, batch.n_paired, batch.paired_target), 0.8)
    m = task.modalities[0]
    weight = next(reference.encoders[m].parameters())  # first Linear weight, (16, 32)
    (want,) = plain_grads(reference, fusion, [weight])
    noise = next(learner.model.encoders[m].parameters()).grad - k[0] * want
    assert float(noise.std() / want.std()) == pytest.approx(1.0, abs=0.2)
    assert abs(float(noise.mean())) < 0.3 * float(want.std())


def test_mmpareto_combines_each_encoders_two_gradients(task):
    learner, batch, reference, (_, uni, fusion) = one_step(task, "mmpareto")
    for m in task.modalities:
        params = list(reference.encoders[m].parameters())
        g_mm = plain_grads(reference, fusion, params)
        g_u = plain_grads(reference, batch.weights[m] * uni[m], params)
        a = mmpareto_weights(torch.cat([g.flatten() for g in g_mm]), torch.cat([g.flatten() for g in g_u]))
        for got, gm, gu in zip(learner.model.encoders[m].parameters(), g_mm, g_u, strict=True):
            h = 2 * (a[0] * gm + a[1] * gu)
            want = 1.5 * max(1.0, float((gm + gu).norm() / h.norm())) * h
            assert torch.allclose(got.grad, want, atol=1e-6)
    # heads get the plain gradient of the summed loss
    head = task.modalities[0]
    (want,) = plain_grads(reference, batch.weights[head] * uni[head], [reference.heads[head].weight])
    assert torch.allclose(learner.model.heads[head].weight.grad, want, atol=1e-6)


def test_mla_alternates_one_sgd_step_per_modality_with_a_projected_shared_head(task):
    learner = learner_of(task, "mla")  # plain SGD, lr 0.1
    model = learner.model
    a, b = task.modalities
    assert model.heads[a] is model.heads[b]
    batch = hand_batch(task)
    reference = copy.deepcopy(model)
    fusion_before = model.fusion.weight.clone()
    out = learner.method.step(context(learner), batch)
    assert out.stepped and learner.method.updates == 2
    assert torch.equal(model.fusion.weight, fusion_before)  # the concatenation head is not trained
    w0, b0 = reference.heads[a].weight, reference.heads[a].bias
    # modality a: a plain step of the head (no projection before the very first update)
    h_a = reference.encoders[a](batch.inputs[a])
    g_w, g_b = torch.autograd.grad(batch.weights[a] * F.cross_entropy(F.linear(h_a, w0, b0), batch.targets[a]),
                                   [w0, b0])
    w1, b1 = (w0 - 0.1 * g_w).detach().requires_grad_(), (b0 - 0.1 * g_b).detach().requires_grad_()
    # modality b: its encoder is untouched by a's step; the weight gradient is multiplied by P^T
    h_b = reference.encoders[b](batch.inputs[b])
    p = mla_projector_update(torch.eye(16), h_b.detach(), alpha=0.1)
    assert torch.allclose(learner.method.projector, p, atol=1e-6)
    g_w, g_b = torch.autograd.grad(batch.weights[b] * F.cross_entropy(F.linear(h_b, w1, b1), batch.targets[b]),
                                   [w1, b1])
    assert torch.allclose(model.heads[a].weight, w1 - 0.1 * g_w @ p.T, atol=1e-6)
    assert torch.allclose(model.heads[a].bias, b1 - 0.1 * g_b, atol=1e-6)
    # and encoder a moved while encoder b's own step used b's loss only
    assert not torch.equal(next(model.encoders[a].parameters()), next(reference.encoders[a].parameters()))


def test_methods_validate_their_names_and_arguments():
    with pytest.raises(ConfigError, match="did you mean 'ogm-ge'"):
        make_method("ogmge")
    with pytest.raises(ConfigError, match=r"unknown learner.method_kwargs key 'alpha' \(valid keys: \['gamma'\]\)"):
        make_method("mmpareto", alpha=1.0)
    with pytest.raises(ConfigError, match="'learner.method_kwargs.ge' must be true or false"):
        make_method("ogm-ge", ge="false")  # a string is not a bool (it would have turned the noise on)
    with pytest.raises(ConfigError, match="alpha must be > 0"):
        make_method("ogm-ge", alpha=0.0)
    assert sorted(METHODS) == ["joint", "mla", "mmpareto", "ogm-ge", "unimodal-aux"]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_learns_with_dus_counts(task, method):
    config = LearnerConfig(batch_size=16, method=method)
    learner = Learner(task, config, seed=0)
    chance = 1 / task.n_classes
    first = learner.accuracies("val")[0]
    for t in range(150):
        stats = learner.step([8, 24] if t % 2 else [16, 16])
        assert stats.finite
    fused, unimodal = learner.accuracies("val")
    assert fused > max(2.5 * chance, first + 0.1), (method, first, fused)
    assert learner.samples_seen.tolist() == [75 * 8 + 75 * 16, 75 * 24 + 75 * 16]


def test_mla_checkpoint_keeps_its_projector(task, tmp_path):
    learner = learner_of(task, "mla")
    for _ in range(3):
        learner.step([16, 8])
    learner.save(tmp_path / "learner.pt")
    other = learner_of(task, "mla")
    other.load(tmp_path / "learner.pt")
    assert torch.equal(other.method.projector, learner.method.projector) and other.method.updates == 6
    assert np.allclose(other.predict(task.splits["val"])[1], learner.predict(task.splits["val"])[1])


def test_a_checkpoint_of_another_head_layout_is_refused(task, tmp_path):
    learner_of(task, "unimodal-aux").save(tmp_path / "learner.pt")
    with pytest.raises(ValueError, match="saved by method 'unimodal-aux'.*shares a single head"):
        learner_of(task, "mla").load(tmp_path / "learner.pt")
    learner_of(task, "ogm-ge").load(tmp_path / "learner.pt")  # same layout: a warm start is allowed
