"""The balancing methods: each formula against a hand computation on a tiny batch, and each method in a learner.

The expected values are computed here from the papers' and authors' formulas, written out with
plain tensor operations (never with the implementation's own helpers), on a tiny task whose
encoders are one tanh layer.
"""

import copy
import math
from itertools import combinations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar

from dus_gym.core.config import ConfigError, LearnerConfig
from dus_gym.core.learner import Learner
from dus_gym.core.methods import METHODS, IterationBatch, check_method_fusion, make_method
from dus_gym.core.methods.agm import agm_coefficients, agm_responses
from dus_gym.core.methods.amco import class_mask, dependence_shares, mask_ratio
from dus_gym.core.methods.cml import confidence_penalty, removal_order
from dus_gym.core.methods.gblending import blending_weights, super_epoch_iterations
from dus_gym.core.methods.greedy import caring_modality
from dus_gym.core.methods.mla import entropy_fusion, mla_projector_update
from dus_gym.core.methods.mmpareto import mmpareto_weights
from dus_gym.core.methods.ogm_ge import modulated_parameters, noise_scale, ogm_ge_coefficients
from dus_gym.core.methods.opm import opm_drop_probabilities
from dus_gym.core.methods.pmr import pmr_coefficients
from dus_gym.core.methods.reconboost import boosting_loss, reconboost_phase
from dus_gym.core.methods.relearning import kmeans, minmax_scale, purity, relearning_strength
from dus_gym.core.methods.sample_level import resample_copies, sample_contributions
from dus_gym.core.task import MLPEncoder, MultimodalSplit, SmallCNNEncoder, Task
from dus_gym.tasks import make_task
from tests.core.conftest import TanhEncoder

B = 16


@pytest.fixture(scope="module")
def task():
    return make_task("synthetic", n_samples=400, dominant_dim=32, weak_dim=8, hidden_dim=16)


def hand_batch(task, counts=(12, 20), progress=None):
    split = task.splits["train"]
    n = min(counts)
    return IterationBatch(
        inputs={m: split.features[m][:c] for m, c in zip(task.modalities, counts, strict=True)},
        targets={m: split.labels[:c] for m, c in zip(task.modalities, counts, strict=True)},
        weights={m: c / B for m, c in zip(task.modalities, counts, strict=True)},
        n_paired=n, paired_target=split.labels[:n], epoch_fraction=0.0, progress=progress, batch_size=B,
    )


def learner_of(task, method, fusion="concat", **kwargs):
    config = LearnerConfig(batch_size=B, momentum=0.0, weight_decay=0.0, lr=0.1, method=method, method_kwargs=kwargs,
                           fusion=fusion)
    return Learner(task, config, seed=3)


def one_step(task, method, counts=(12, 20), progress=None, fusion="concat", **kwargs):
    """A learner of ``method`` after one method step on the hand-made batch, and a copy of the model before it."""
    learner = learner_of(task, method, fusion=fusion, **kwargs)
    batch = hand_batch(task, counts, progress)
    reference = copy.deepcopy(learner.model)
    learner.method.step(learner._context, batch)
    return learner, batch, reference


def grads(loss, params):
    return [g if g is not None else torch.zeros_like(p)
            for g, p in zip(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True), params,
                            strict=True)]


def encode(model, batch):
    return {m: model.encoders[m](x) for m, x in batch.inputs.items()}


def concat_logits(model, feats, n):
    """The concatenation head written out: [h_a, h_b] W^T + b."""
    return torch.cat([feats["a"][:n], feats["b"][:n]], 1) @ model.fusion.weight.T + model.fusion.bias


def assert_grads(model, reference_grads, params_of, atol=1e-6):
    for got, want in zip(params_of(model), reference_grads, strict=True):
        assert torch.allclose(got.grad, want, atol=atol), (got.grad, want)


def test_methods_refuse_fusion_heads_they_are_not_defined_for():
    with pytest.raises(ConfigError, match=r"method 'ogm-ge' is defined for learner.fusion in \['concat', 'sum'\]"):
        check_method_fusion("ogm-ge", "film")
    with pytest.raises(ConfigError, match="'mmcosine' is defined for"):
        check_method_fusion("mmcosine", "gated")
    check_method_fusion("agm", "film")
    with pytest.raises(ConfigError, match="learner.fusion must be one of"):
        LearnerConfig(fusion="attention")


# --- joint ------------------------------------------------------------------------------------------------------

def test_joint_encoders_see_the_fusion_loss_only(tiny):
    learner, batch, ref = one_step(tiny, "joint")
    feats = encode(ref, batch)
    fusion = F.cross_entropy(concat_logits(ref, feats, batch.n_paired), batch.paired_target)
    for m in tiny.modalities:
        assert_grads(learner.model, grads(fusion, list(ref.encoders[m].parameters())),
                     lambda model, m=m: model.encoders[m].parameters())
    # the monitor head of b learns on its own 20 samples, on detached features
    head = F.cross_entropy(feats["b"].detach() @ ref.heads["b"].weight.T + ref.heads["b"].bias, batch.targets["b"])
    assert_grads(learner.model, grads(head, [ref.heads["b"].weight]), lambda model: [model.heads["b"].weight])


# --- ogm-ge -----------------------------------------------------------------------------------------------------

def test_ogm_ge_coefficient_for_a_known_score_ratio():
    k = ogm_ge_coefficients(torch.tensor([30.0, 10.0]), alpha=0.8)
    # rho(a) = 3 > 1: k(a) = 1 - tanh(0.8 * 3); the modality behind keeps its gradient
    assert k.tolist() == pytest.approx([1 - math.tanh(2.4), 1.0], abs=1e-6)
    assert ogm_ge_coefficients(torch.tensor([5.0, 5.0]), 0.8).tolist() == [1.0, 1.0]
    # three modalities: rho(m) = s(m) / mean of the others
    k3 = ogm_ge_coefficients(torch.tensor([6.0, 2.0, 2.0]), 0.5)
    assert k3.tolist() == pytest.approx([1 - math.tanh(1.5), 1.0, 1.0], abs=1e-6)


def ogm_hand_coefficients(ref, batch, alpha=0.8):
    """s(m) = sum_i softmax(h_m W_m^T + b/2)[y_i] (the fusion head split by modality), then Eq. 10."""
    n, y = batch.n_paired, batch.paired_target
    feats = encode(ref, batch)
    first, second = list(batch.inputs)
    d = feats[first].shape[1]
    w, b = ref.fusion.weight.detach(), ref.fusion.bias.detach()
    s_a = F.softmax(feats[first][:n].detach() @ w[:, :d].T + b / 2, 1)[torch.arange(n), y].sum()
    s_b = F.softmax(feats[second][:n].detach() @ w[:, d:].T + b / 2, 1)[torch.arange(n), y].sum()
    rho = float(s_a / s_b)
    return [1 - math.tanh(alpha * rho), 1.0] if rho > 1 else [1.0, 1 - math.tanh(alpha / rho)] if rho < 1 else [1, 1]


def test_ogm_slows_the_leading_encoder_by_its_coefficient(tiny):
    learner, batch, ref = one_step(tiny, "ogm-ge", ge=False)
    k = ogm_hand_coefficients(ref, batch)
    assert min(k) < 1.0 and max(k) == 1.0  # one modality leads and is slowed
    fusion = F.cross_entropy(concat_logits(ref, encode(ref, batch), batch.n_paired), batch.paired_target)
    for i, m in enumerate(tiny.modalities):
        params = list(ref.encoders[m].parameters())
        want = [k[i] * g if p.dim() >= 2 else g for p, g in zip(params, grads(fusion, params), strict=True)]
        assert_grads(learner.model, want, lambda model, m=m: model.encoders[m].parameters())


def test_ogm_ge_noise_has_the_gradient_spread_scaled_to_the_paired_batch(task):
    learner, batch, ref = one_step(task, "ogm-ge")  # 12 paired samples of B = 16
    k = ogm_hand_coefficients(ref, batch)
    m = task.modalities[0]
    weight = next(ref.encoders[m].parameters())  # first Linear weight, (16, 32)
    feats = encode(ref, batch)
    paired = torch.cat([feats[x][: batch.n_paired] for x in task.modalities], 1)
    (want,) = grads(F.cross_entropy(ref.fusion(paired), batch.paired_target), [weight])
    noise = next(learner.model.encoders[m].parameters()).grad - k[0] * want
    assert float(noise.std() / want.std()) == pytest.approx(math.sqrt(12 / 16), abs=0.1)
    assert abs(float(noise.mean())) < 0.3 * float(want.std())
    assert noise_scale(8, 64) == pytest.approx(math.sqrt(1 / 8)) and noise_scale(128, 64) == 1.0


def test_ogm_acts_only_inside_its_window(tiny):
    inside, batch, ref = one_step(tiny, "ogm-ge", progress=0.2, ge=False)
    outside, _, _ = one_step(tiny, "ogm-ge", progress=0.6, ge=False)  # default window: the first half
    fusion = F.cross_entropy(concat_logits(ref, encode(ref, batch), batch.n_paired), batch.paired_target)
    plain = grads(fusion, list(ref.encoders["a"].parameters()) + list(ref.encoders["b"].parameters()))
    moved = list(outside.model.encoders["a"].parameters()) + list(outside.model.encoders["b"].parameters())
    assert all(torch.allclose(p.grad, g, atol=1e-6) for p, g in zip(moved, plain, strict=True))
    slowed = list(inside.model.encoders["a"].parameters()) + list(inside.model.encoders["b"].parameters())
    assert not all(torch.allclose(p.grad, g, atol=1e-6) for p, g in zip(slowed, plain, strict=True))


def test_ogm_parameter_rules():
    cnn, mlp = SmallCNNEncoder((16, 15), 4, 8), MLPEncoder(6, 8)
    kernels = [cnn.conv[0].weight, cnn.conv[3].weight]
    assert [p.shape for p in modulated_parameters(cnn, "auto")] == [k.shape for k in kernels]  # the authors' rule
    assert len(modulated_parameters(cnn, "weights")) == 3  # two kernels and the linear weight
    assert [p.shape for p in modulated_parameters(mlp, "auto")] == [(8, 6), (8, 8)]  # no kernel: every weight
    assert modulated_parameters(mlp, "conv") == []
    with pytest.raises(ConfigError, match="params must be one of"):
        make_method("ogm-ge", params="biases")
    with pytest.raises(ConfigError, match="0 <= start <= end <= 1"):
        make_method("ogm-ge", start=0.6, end=0.5)


def test_ogm_ge_stays_finite_with_8_paired_samples(monkeypatch):
    """The case that diverged (synthetic, seed 0, counts (8, 128): NaN at iteration 169 of 800, inside the
    modulation window) stays finite with the noise scaled to the paired batch; without the scale it diverges."""
    import dus_gym.core.methods.ogm_ge as ogm_ge

    task = make_task("synthetic")

    def run(n=300):
        learner = Learner(task, LearnerConfig(method="ogm-ge"), seed=0)
        return [learner.step([8, 128], progress=t / 800).loss for t in range(n)]

    assert np.isfinite(run()).all()
    monkeypatch.setattr(ogm_ge, "noise_scale", lambda n_paired, batch_size: 1.0)  # the authors' noise as it is
    assert not np.isfinite(run(200)).all()


# --- mmpareto ---------------------------------------------------------------------------------------------------

def test_mmpareto_weights_without_and_with_conflict():
    assert mmpareto_weights(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])).tolist() == [0.5, 0.5]
    g_mm, g_u = torch.tensor([1.0, 0.0]), torch.tensor([-3.0, 0.1])  # cosine < 0: the min-norm point
    # argmin over a in [0, 1] of |a g_mm + (1 - a) g_u|^2 = ((g_u - g_mm) . g_u) / |g_mm - g_u|^2 = 12.01 / 16.01
    assert mmpareto_weights(g_mm, g_u).tolist() == pytest.approx([12.01 / 16.01, 4.0 / 16.01], abs=1e-6)


def min_norm_weight(g1: torch.Tensor, g2: torch.Tensor) -> float:
    """The min-norm convex combination by numerical minimisation (independent of the closed form)."""
    a, b = g1.double().numpy(), g2.double().numpy()
    return float(minimize_scalar(lambda t: float(np.sum((t * a + (1 - t) * b) ** 2)), bounds=(0, 1),
                                 method="bounded", options={"xatol": 1e-10}).x)


def test_mmpareto_combines_each_encoders_two_gradients(tiny):
    learner, batch, ref = one_step(tiny, "mmpareto")
    feats = encode(ref, batch)
    fusion = F.cross_entropy(concat_logits(ref, feats, batch.n_paired), batch.paired_target)
    for m in tiny.modalities:
        params = list(ref.encoders[m].parameters())
        uni = batch.weights[m] * F.cross_entropy(ref.heads[m](feats[m]), batch.targets[m])
        g_mm, g_u = grads(fusion, params), grads(uni, params)
        flat_mm, flat_u = torch.cat([g.flatten() for g in g_mm]), torch.cat([g.flatten() for g in g_u])
        a = 0.5 if float(flat_mm @ flat_u) > 0 else min_norm_weight(flat_mm, flat_u)
        want = []
        for gm, gu in zip(g_mm, g_u, strict=True):
            h = 2 * (a * gm + (1 - a) * gu)
            want.append(1.5 * max(1.0, float((gm + gu).norm() / h.norm())) * h)
        assert_grads(learner.model, want, lambda model, m=m: model.encoders[m].parameters(), atol=1e-5)
    # heads get the plain gradient of the summed loss
    uni_a = batch.weights["a"] * F.cross_entropy(ref.heads["a"](feats["a"]), batch.targets["a"])
    assert_grads(learner.model, grads(uni_a, [ref.heads["a"].weight]), lambda model: [model.heads["a"].weight])


# --- mla --------------------------------------------------------------------------------------------------------

def test_mla_projector_update_on_a_known_feature():
    p = mla_projector_update(torch.eye(2), torch.tensor([[1.0, 0.0], [1.0, 0.0]]), alpha=0.1)
    raw = np.diag([1 - 1 / 1.1, 1.0])
    assert p.numpy() == pytest.approx(raw / np.linalg.norm(raw), abs=1e-6)


def test_entropy_fusion_weights_the_certain_modality():
    fused = entropy_fusion({"a": torch.tensor([[30.0, 0.0]]), "b": torch.tensor([[0.0, 0.0]])})
    w = np.exp([0.0, -math.log(2)]) / np.exp([0.0, -math.log(2)]).sum()  # entropies 0 and ln 2
    assert fused[0].tolist() == pytest.approx((w[0] * np.array([1, 0]) + w[1] * np.array([0.5, 0.5])).tolist(),
                                              abs=1e-6)


def test_mla_alternates_one_sgd_step_per_modality_with_a_projected_shared_head(tiny):
    learner = learner_of(tiny, "mla")  # plain SGD, lr 0.1
    model = learner.model
    assert model.heads["a"] is model.heads["b"]
    batch = hand_batch(tiny)
    ref = copy.deepcopy(model)
    fusion_before = model.fusion.weight.clone()
    out = learner.method.step(learner._context, batch)
    assert out.optimizer_steps == 2 and learner.method.updates == 2
    assert torch.equal(model.fusion.weight, fusion_before)  # the fusion head is not trained
    w0, b0 = ref.heads["a"].weight, ref.heads["a"].bias
    # modality a: a plain step of the head (no projection before the very first update)
    h_a = ref.encoders["a"](batch.inputs["a"])
    g_w, g_b = torch.autograd.grad(batch.weights["a"] * F.cross_entropy(h_a @ w0.T + b0, batch.targets["a"]), [w0, b0])
    w1, b1 = (w0 - 0.1 * g_w).detach().requires_grad_(), (b0 - 0.1 * g_b).detach().requires_grad_()
    # modality b: P = I - k k^T / (alpha + r k), k = r^T (P = I before), normalised; alpha = 0.1^(1 + 0)
    h_b = ref.encoders["b"](batch.inputs["b"])
    r = h_b.detach().mean(0, keepdim=True).double().numpy()
    raw = np.eye(5) - (r.T @ r) / (0.1 + (r @ r.T).item())
    p = torch.tensor(raw / np.linalg.norm(raw), dtype=torch.float32)
    assert torch.allclose(learner.method.projector, p, atol=1e-6)
    g_w, g_b = torch.autograd.grad(batch.weights["b"] * F.cross_entropy(h_b @ w1.T + b1, batch.targets["b"]), [w1, b1])
    assert torch.allclose(model.heads["a"].weight, w1 - 0.1 * g_w @ p.T, atol=1e-6)
    assert torch.allclose(model.heads["a"].bias, b1 - 0.1 * g_b, atol=1e-6)
    assert not torch.equal(model.encoders["a"].lin.weight, ref.encoders["a"].lin.weight)


# --- pmr --------------------------------------------------------------------------------------------------------

def test_pmr_coefficients_go_to_the_modality_behind():
    assert pmr_coefficients(torch.tensor([3.0, 5.0]), 2.0).tolist() == [2.0, 0.0]
    assert pmr_coefficients(torch.tensor([5.0, 3.0]), 2.0).tolist() == [0.0, 2.0]
    assert pmr_coefficients(torch.tensor([4.0, 4.0]), 2.0).tolist() == [0.0, 0.0]  # a tie: neither
    assert pmr_coefficients(torch.tensor([1.0, 6.0, 2.0]), 1.0).tolist() == [1.0, 0.0, 1.0]


@pytest.mark.parametrize(("proto_lr", "weight"), [(1e-3, 2.0 * 1e-3 / 0.1), (None, 2.0)])
def test_pmr_prototypes_and_prototypical_loss_by_hand(tiny, proto_lr, weight):
    # the prototypical CE weighs alpha proto_lr / lr (the learner's lr is 0.1): with SGD its step is
    # alpha proto_lr times its gradient, the authors' (lr 1e-3); proto_lr None: alpha at the learner's lr
    learner, batch, ref = one_step(tiny, "pmr", sample_fraction=1.0, progress=0.1, proto_lr=proto_lr)
    train = tiny.splits["train"]
    protos = {}
    for m in tiny.modalities:  # class means of the features over the whole (sampled) training split
        feats = ref.encoders[m](train.features[m]).detach()
        protos[m] = torch.stack([feats[train.labels == c].mean(0) for c in range(3)])
        assert torch.allclose(learner.method.prototypes[m], protos[m], atol=1e-5)
    feats = encode(ref, batch)
    n, y = batch.n_paired, batch.paired_target

    def neg_dist(m, rows):  # -|h - P_c| for every class c, written out
        h = feats[m][:rows]
        return -((h[:, None, :] - protos[m][None]) ** 2).sum(2).sqrt()

    scores = [F.softmax(neg_dist(m, n), 1)[torch.arange(n), y].sum() for m in tiny.modalities]
    behind = 0 if scores[0] < scores[1] else 1
    m = tiny.modalities[behind]
    loss = (F.cross_entropy(concat_logits(ref, feats, n), y)
            + weight * batch.weights[m] * F.cross_entropy(neg_dist(m, len(batch.targets[m])), batch.targets[m]))
    for x in tiny.modalities:
        assert_grads(learner.model, grads(loss, list(ref.encoders[x].parameters())),
                     lambda model, x=x: model.encoders[x].parameters(), atol=1e-5)


def test_pmr_prototypical_step_follows_the_base_lr_through_a_decay(tiny):
    config = LearnerConfig(batch_size=B, momentum=0.0, weight_decay=0.0, lr=0.1, method="pmr", lr_decay_every=1,
                           lr_decay_gamma=0.5)
    learner = Learner(tiny, config, seed=3)
    learner.step([16, 16], progress=0.1)  # the learner's lr is now 0.05
    assert learner.optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    # weight alpha 1e-3 / 0.1 (the base lr): its step alpha 1e-3 x 0.05 / 0.1 decays with the learner's lr
    assert learner.method.step_ratio(learner._context) == pytest.approx(1e-3 / 0.1)
    with pytest.raises(ConfigError, match="pmr proto_lr must be a positive number or null"):
        make_method("pmr", proto_lr=0.0)


# --- agm --------------------------------------------------------------------------------------------------------

def test_agm_responses_and_coefficients_by_hand():
    full, pad_b, pad_a, none = (torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, 1.0]]), torch.tensor([[0.2, 0.1]]),
                                torch.tensor([[0.3, 0.3]]))
    values = {frozenset({0, 1}): full, frozenset({0}): pad_b, frozenset({1}): pad_a, frozenset(): none}
    r_a, r_b = agm_responses(values, 2)
    assert torch.allclose(r_a, 0.5 * (full - pad_a + pad_b))  # the authors' 0.5 (f(a, v) - f(0, v) + f(a, 0))
    assert torch.allclose(r_b, 0.5 * (full - pad_b + pad_a)) and torch.allclose(r_a + r_b, full)
    c = agm_coefficients(torch.tensor([0.5, 1.0], dtype=torch.float64), torch.tensor([0.2, 0.4], dtype=torch.float64),
                         alpha=1.0)
    want_a = math.exp(min(math.exp(0.4 - 0.2) - math.exp(1.0 - 0.5), 10))
    want_b = math.exp(min(math.exp(0.2 - 0.4) - math.exp(0.5 - 1.0), 10))
    assert c.tolist() == pytest.approx([want_a, want_b])
    # target(b) = exp(30 - 0) is far above ratio(b) = 1: the exponent is capped at 10
    assert float(agm_coefficients(torch.zeros(2), torch.tensor([30.0, 0.0]), 1.0)[1]) == pytest.approx(math.exp(10))
    # three modalities: the responses stay a split of the fused logits
    values3 = {frozenset(s): torch.tensor([[float(len(s) ** 2 + sum(s))]]) for s in
               [(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]}
    assert float(sum(agm_responses(values3, 3))) == pytest.approx(float(values3[frozenset({0, 1, 2})]))


def test_agm_scales_each_modalitys_share_of_the_gradient(tiny):
    learner, batch, ref = one_step(tiny, "agm")
    n, y = batch.n_paired, batch.paired_target
    feats = encode(ref, batch)
    za = ref.encoders["a"](torch.zeros(1, 4)).expand(n, -1)
    zb = ref.encoders["b"](torch.zeros(1, 3)).expand(n, -1)

    def f(h_a, h_b):
        return torch.cat([h_a, h_b], 1) @ ref.fusion.weight.T + ref.fusion.bias

    total, pad_b, pad_a = f(feats["a"][:n], feats["b"][:n]), f(feats["a"][:n], zb), f(za, feats["b"][:n])
    r_a, r_b = 0.5 * (total - pad_a + pad_b), 0.5 * (total - pad_b + pad_a)
    score = [float(-F.log_softmax(r.detach(), 1)[torch.arange(n), y].mean()) for r in (r_a, r_b)]
    # first iteration: the running scores are 0, so the target ratio is exp(0) = 1
    c_a = math.exp(min(1 - math.exp(score[1] - score[0]), 10))
    c_b = math.exp(min(1 - math.exp(score[0] - score[1]), 10))
    # the authors' backward hooks: the loss keeps the value CE(f(a, v), y); dCE/dlogits = (softmax(f) - onehot) / n
    # reaches each response scaled by its coefficient
    dlogits = (F.softmax(total.detach(), 1) - F.one_hot(y, 3)) / n
    loss = (dlogits * (c_a * r_a + c_b * r_b)).sum()
    want = {m: grads(loss, list(ref.encoders[m].parameters())) for m in tiny.modalities}
    assert max(float(g.abs().max()) for g in grads(loss, [ref.fusion.weight])) <= 1  # no clipping on this batch
    for m in tiny.modalities:
        assert_grads(learner.model, want[m], lambda model, m=m: model.encoders[m].parameters(), atol=1e-5)
    assert learner.method.running.tolist() == pytest.approx(score, rel=1e-5)  # the running means after one update


# --- mmcosine ---------------------------------------------------------------------------------------------------

def test_mmcosine_logits_and_gradients_by_hand(tiny):
    learner, batch, ref = one_step(tiny, "mmcosine")
    n, y = batch.n_paired, batch.paired_target
    feats = encode(ref, batch)
    w = ref.fusion.weight
    logits = 0
    for m, cols in (("a", slice(0, 5)), ("b", slice(5, 10))):
        h = feats[m][:n]
        wm = w[:, cols]
        logits = logits + 10.0 * (h @ wm.T) / (h.norm(dim=1, keepdim=True) * wm.norm(dim=1)[None])
    loss = F.cross_entropy(logits, y)
    for m in tiny.modalities:
        assert_grads(learner.model, grads(loss, list(ref.encoders[m].parameters())),
                     lambda model, m=m: model.encoders[m].parameters(), atol=1e-5)
    assert_grads(learner.model, grads(loss, [w]), lambda model: [model.fusion.weight], atol=1e-5)
    assert learner.model.fusion.bias.grad is None  # cosine logits have no bias
    # evaluation fuses with the same cosine logits
    _, fused = learner.predict(tiny.splits["test"])
    x = tiny.splits["test"].features
    model = learner.model
    h = {m: model.encoders[m](x[m]) for m in ("a", "b")}
    want = sum(10.0 * F.normalize(h[m], dim=1) @ F.normalize(model.fusion.weight[:, c], dim=1).T
               for m, c in (("a", slice(0, 5)), ("b", slice(5, 10))))
    assert np.allclose(fused, want.softmax(1).detach().numpy(), atol=1e-5)


# --- g-blending -------------------------------------------------------------------------------------------------

def test_blending_weights_by_hand():
    before = {"train": torch.tensor([1.0, 2.0, 1.5], dtype=torch.float64),
              "val": torch.tensor([1.5, 2.2, 1.8], dtype=torch.float64)}
    now = {"train": torch.tensor([0.5, 1.9, 0.6], dtype=torch.float64),
           "val": torch.tensor([1.2, 2.25, 1.0], dtype=torch.float64)}
    # gains 0.3, 0 (the validation loss rose), 0.8; overfitting changes 0.2, 0.15, 0.1
    raw = [0.3 / (0.2**2 + 1e-8), 0.0, 0.8 / (0.1**2 + 1e-8)]
    assert blending_weights(before, now).tolist() == pytest.approx([r / sum(raw) for r in raw])
    assert blending_weights(before, {"train": before["train"], "val": before["val"] + 1}) is None


def test_g_blending_uses_fixed_weights_as_given(tiny):
    # VMZ scales the audio, visual and AV losses by the given weights, not renormalised to sum to 1
    learner, batch, ref = one_step(tiny, "g-blending", weights=[0.2, 0.3, 1.0])
    feats = encode(ref, batch)
    heads = [batch.weights[m] * F.cross_entropy(ref.heads[m](feats[m]), batch.targets[m]) for m in ("a", "b")]
    loss = 0.2 * heads[0] + 0.3 * heads[1] + 1.0 * F.cross_entropy(concat_logits(ref, feats, batch.n_paired),
                                                                   batch.paired_target)
    for m in tiny.modalities:
        assert_grads(learner.model, grads(loss, list(ref.encoders[m].parameters())),
                     lambda model, m=m: model.encoders[m].parameters(), atol=1e-6)


def test_super_epoch_in_learner_iterations():
    assert super_epoch_iterations(10, 1000, 64) == 156  # 10 epochs of 1000 / 64 uniform iterations
    assert super_epoch_iterations(1, 60, 16) == 4
    assert super_epoch_iterations(1, 10, 64) == 1


def test_g_blending_re_estimates_every_super_epoch_of_learner_iterations(tiny, monkeypatch):
    learner = learner_of(tiny, "g-blending", super_epoch=1)  # n_train 60, B 16: 4 iterations per super-epoch
    calls = []
    monkeypatch.setattr(learner.method, "estimate",
                        lambda ctx, n, b: calls.append((learner.method.iterations, n, b)))
    for t in range(9):  # counts like the heuristic's: the data walk finishes epochs faster than uniform would
        learner.step([16, 48] if t % 2 else [16, 16])
    assert learner.planner.epoch == 4  # 5 x 16 + 4 x 48 = 272 samples: 4 epochs of 60 walked
    assert calls == [(0, 4, 16), (4, 4, 16), (8, 4, 16)]  # but one estimate every 4 learner iterations


def test_g_blending_estimation_batches_walk_whole_shuffles(tiny):
    learner = learner_of(tiny, "g-blending")
    batches = list(learner.method.training_batches(learner._context, 8, 16))  # 128 samples: 2 shuffles of 60 + 8
    assert [len(y) for _, y in batches] == [16] * 8
    rows = torch.cat([x["a"] for x, _ in batches])
    train = tiny.splits["train"].features["a"]

    def same_rows(got, want):
        return torch.equal(got[torch.argsort(got[:, 0])], want[torch.argsort(want[:, 0])])

    assert same_rows(rows[:60], train) and same_rows(rows[60:120], train)  # every sample once per shuffle
    assert not torch.equal(rows[:60], rows[60:120])  # two different shuffles


def test_g_blending_estimates_from_heads_trained_alone_by_hand(tiny):
    # B = 60 = the training split and super_epoch 1: one estimation iteration per head, on the whole split
    config = LearnerConfig(batch_size=60, momentum=0.0, weight_decay=0.0, lr=0.1, method="g-blending",
                           method_kwargs={"super_epoch": 1})
    learner = Learner(tiny, config, seed=3)
    batch = IterationBatch(**{**hand_batch(tiny).__dict__, "batch_size": 60})
    ref = copy.deepcopy(learner.model)
    learner.method.step(learner._context, batch)

    def head_logits(model, x):  # the two unimodal heads, then the concatenation head
        h = {m: model.encoders[m](x[m]) for m in ("a", "b")}
        return [model.heads["a"](h["a"]), model.heads["b"](h["b"]), concat_logits(model, h, len(x["a"]))]

    def losses(model, split):
        with torch.no_grad():
            return [float(F.cross_entropy(o, split.labels)) for o in head_logits(model, split.features)]

    train, val = tiny.splits["train"], tiny.splits["val"]
    before = {"train": losses(ref, train), "val": losses(ref, val)}
    raw = []
    for k in range(3):  # head k alone: one SGD step (lr 0.1) of its CE on the whole split, from the current model
        model = copy.deepcopy(ref)
        params = list(model.parameters())
        g = grads(F.cross_entropy(head_logits(model, train.features)[k], train.labels), params)
        with torch.no_grad():
            for p, gp in zip(params, g, strict=True):
                p -= 0.1 * gp
        after = {"train": losses(model, train)[k], "val": losses(model, val)[k]}
        gain = max(before["val"][k] - after["val"], 0.0)
        overfit = (after["val"] - after["train"]) - (before["val"][k] - before["train"][k])
        raw.append(gain / (overfit**2 + 1e-8))
    want = [r / sum(raw) for r in raw]
    assert learner.method.weights.tolist() == pytest.approx(want, rel=1e-3)
    # this iteration's loss already uses the estimate; the model itself was not trained by the estimate
    feats = encode(ref, batch)
    heads = [batch.weights[m] * F.cross_entropy(ref.heads[m](feats[m]), batch.targets[m]) for m in ("a", "b")]
    loss = (want[0] * heads[0] + want[1] * heads[1]
            + want[2] * F.cross_entropy(concat_logits(ref, feats, batch.n_paired), batch.paired_target))
    for m in tiny.modalities:
        assert_grads(learner.model, grads(loss, list(ref.encoders[m].parameters())),
                     lambda model, m=m: model.encoders[m].parameters(), atol=1e-5)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_g_blending_estimates_with_the_learners_optimiser(tiny, optimizer, monkeypatch):
    # the heads trained alone take the learner's optimiser class and its current hyper-parameters
    config = LearnerConfig(batch_size=B, lr=0.01, weight_decay=0.01, optimizer=optimizer, method="g-blending",
                           method_kwargs={"super_epoch": 1})
    learner = Learner(tiny, config, seed=3)
    built = []
    original = type(learner.optimizer).__init__

    def record(self, params, *args, **kwargs):
        original(self, params, *args, **kwargs)
        built.append(self)

    monkeypatch.setattr(type(learner.optimizer), "__init__", record)
    learner.method.step(learner._context, hand_batch(tiny))
    assert len(built) == 3 and all(type(o) is type(learner.optimizer) for o in built)  # one copy per head
    for copy_optimizer in built:
        group = copy_optimizer.param_groups[0]
        assert (group["lr"], group["weight_decay"]) == (0.01, 0.01)
    assert float(learner.method.weights.sum()) == pytest.approx(1.0)


def test_g_blending_fixed_weights_need_one_per_head(tiny):
    with pytest.raises(ConfigError, match="need 3 entries"):
        learner_of(tiny, "g-blending", weights=[0.5, 0.5])


# --- greedy -----------------------------------------------------------------------------------------------------

def test_greedy_cares_for_the_modality_with_the_higher_bdr():
    assert caring_modality([0.5, 0.2], 0.01) == 0  # d = BDR_0 - BDR_1 > epsilon
    assert caring_modality([0.2, 0.5], 0.01) == 1
    assert caring_modality([0.2, 0.205], 0.01) is None  # |d| <= epsilon
    assert caring_modality([0.1, 0.9, 0.3], 0.01) == 1


def greedy_hand_loss(ref, batch, running_a=None):
    """Fusion CE through the gates written out (gate of a replaced by ``running_a`` when given)."""
    feats = encode(ref, batch)
    n = batch.n_paired
    gates = ref.greedy_gates
    z = torch.relu(torch.cat([feats["a"][:n], feats["b"][:n]], 1) @ gates.squeeze.weight.T + gates.squeeze.bias)
    g = {m: torch.sigmoid(z @ gates.excite[m].weight.T + gates.excite[m].bias) for m in ("a", "b")}
    if running_a is not None:
        g["a"] = running_a.expand(n, -1)
    gated = {m: feats[m][:n] * g[m] for m in ("a", "b")}
    return F.cross_entropy(concat_logits(ref, gated, n), batch.paired_target), g


def test_greedy_gates_the_fused_features_and_accumulates_the_speeds(tiny):
    learner, batch, ref = one_step(tiny, "greedy")
    method = learner.method
    loss, g = greedy_hand_loss(ref, batch)
    for m in tiny.modalities:
        assert_grads(learner.model, grads(loss, list(ref.encoders[m].parameters())),
                     lambda model, m=m: model.encoders[m].parameters(), atol=1e-6)
    gate_params = list(ref.greedy_gates.parameters())
    assert_grads(learner.model, grads(loss, gate_params), lambda model: model.greedy_gates.parameters())
    # speeds: sum |g|^2 / sum |w|^2, main over the encoder, bypass over the squeeze and own excitation layers
    for k, m in enumerate(tiny.modalities):
        enc = list(ref.encoders[m].parameters())
        main = sum((x**2).sum() for x in grads(loss, enc)) / sum((w**2).sum() for w in enc)
        bypass_params = [*ref.greedy_gates.squeeze.parameters(), *ref.greedy_gates.excite[m].parameters()]
        bypass = (sum((x**2).sum() for x in grads(loss, bypass_params))
                  / sum((w**2).sum() for w in bypass_params))
        assert method.main_speed[k] == pytest.approx(float(main.detach()), rel=1e-4)
        assert method.bypass_speed[k] == pytest.approx(float(bypass.detach()), rel=1e-4)
        assert torch.allclose(method.running_gate[k], g[m].mean(0).detach(), atol=1e-6)
    assert method.caring is None  # epoch 0 < start_epoch: speeds only


def test_greedy_re_balancing_replaces_the_cared_for_gate_by_its_running_average(tiny):
    learner = learner_of(tiny, "greedy", window=2)
    method = learner.method
    running = torch.full((5,), 0.3)
    method.running_gate[0], method.gate_updates, method.caring = running.clone(), 1, 0
    batch = hand_batch(tiny)
    ref = copy.deepcopy(learner.model)
    method.step(learner._context, batch)
    _, g = greedy_hand_loss(ref, batch)
    new_running = (g["a"].mean(0).detach() + running) / 2  # updated before it replaces the gate
    loss, _ = greedy_hand_loss(ref, batch, running_a=new_running)
    for m in tiny.modalities:
        assert_grads(learner.model, grads(loss, list(ref.encoders[m].parameters())),
                     lambda model, m=m: model.encoders[m].parameters(), atol=1e-6)
    assert learner.model.greedy_gates.excite["a"].weight.grad is None  # a's gate is a constant
    assert method.caring == 0 and method.curation_step == 1 and method.main_speed == [0.0, 0.0]
    learner.optimizer.zero_grad()
    method.step(learner._context, batch)
    assert method.caring is None  # the window of 2 steps is over


# --- reconboost -------------------------------------------------------------------------------------------------

def test_reconboost_stages_alternate_the_modalities():
    # stages of 4 + 4 epochs: boost a, rectify {a}; boost b against {a}, rectify {a, b}; boost a against {b}...
    assert reconboost_phase(0.0, 4, 4, 2) == (0, 0, True, ())
    assert reconboost_phase(5.5, 4, 4, 2)[1:] == (0, False, (0,))
    assert reconboost_phase(8.0, 4, 4, 2)[1:] == (1, True, (0,))
    assert reconboost_phase(12.0, 4, 4, 2)[1:] == (1, False, (0, 1))
    assert reconboost_phase(17.0, 4, 4, 2)[1:] == (0, True, (0, 1))
    assert reconboost_phase(8.5, 1, 1, 3)[1:] == (1, True, (0, 1, 2))  # stage 4 of 3 modalities


def test_reconboost_boosting_loss_by_hand():
    logits, ens = torch.tensor([[1.0, 0.0, -1.0]]), torch.tensor([[0.0, 2.0, 0.0]])
    y = torch.tensor([0])
    log_p, q = logits.log_softmax(1)[0, 0], ens.softmax(1)[0, 0]
    # -w1 mean_c(y_c log p_c) + w2 mean_c(y_c q_c log p_c), one-hot y, C = 3 classes
    assert float(boosting_loss(logits, ens, y, 5.0, 1.0)) == pytest.approx(float(-(5.0 - q) * log_p / 3), rel=1e-6)
    assert float(boosting_loss(logits, None, y, 5.0, 1.0)) == pytest.approx(float(-4.0 * log_p / 3), rel=1e-6)


def test_reconboost_boosts_one_modality_against_the_others_then_rectifies_the_ensemble(tiny):
    learner = learner_of(tiny, "reconboost")
    model, method = learner.model, learner.method
    batch = hand_batch(tiny)
    n, y = batch.n_paired, batch.paired_target
    batch.epoch = 8  # stage 1: boost b against the ensemble {a}
    ref = copy.deepcopy(model)
    method.step(learner._context, batch)
    feats = encode(ref, batch)
    out = {m: feats[m][:n] @ ref.heads[m].weight.T + ref.heads[m].bias for m in tiny.modalities}
    q = F.softmax(ref.reconboost_rate * out["a"], 1)[torch.arange(n), y].detach()
    loss = (-(5.0 - q) * F.log_softmax(out["b"], 1)[torch.arange(n), y]).mean() / 3
    params = [*ref.encoders["b"].parameters(), *ref.heads["b"].parameters()]
    assert_grads(model, grads(loss, params),
                 lambda mod: [*mod.encoders["b"].parameters(), *mod.heads["b"].parameters()])
    assert model.encoders["a"].lin.weight.grad is None and model.reconboost_rate.grad is None
    learner.optimizer.zero_grad(set_to_none=True)
    batch.epoch = 13  # stage 1's rectification: CE of rate * (out_a + out_b), every parameter
    out_step = method.step(learner._context, batch)
    loss = F.cross_entropy(ref.reconboost_rate * (out["a"] + out["b"]), y)
    assert float(out_step.fusion_loss.detach()) == pytest.approx(float(loss.detach()), rel=1e-5)
    params = [*ref.encoders["a"].parameters(), ref.reconboost_rate]
    assert_grads(model, grads(loss, params), lambda mod: [*mod.encoders["a"].parameters(), mod.reconboost_rate])
    assert method.ensemble == (0, 1)


# --- umt --------------------------------------------------------------------------------------------------------

def test_umt_trains_unimodal_teachers_then_distils_a_restarted_student(tiny):
    learner = learner_of(tiny, "umt")
    model, method = learner.model, learner.method
    initial = copy.deepcopy(model)
    batch = hand_batch(tiny, progress=0.1)
    learner.method.step(learner._context, batch)  # phase 1: each encoder and head as a unimodal model
    feats = encode(initial, batch)
    for m in tiny.modalities:
        head = initial.heads[m]
        loss = batch.weights[m] * F.cross_entropy(feats[m] @ head.weight.T + head.bias, batch.targets[m])
        params = [*initial.encoders[m].parameters(), *head.parameters()]
        assert_grads(model, grads(loss, params), lambda mod, m=m: [*mod.encoders[m].parameters(),
                                                                    *mod.heads[m].parameters()])
    assert model.fusion.weight.grad is None
    learner.optimizer.step()
    learner.optimizer.zero_grad(set_to_none=True)
    trained = copy.deepcopy(model)
    batch.progress = 0.5  # the switch: teachers = the trained encoders, the student restarts
    method.step(learner._context, batch)
    for m in tiny.modalities:
        assert torch.equal(method.teachers[m].lin.weight, trained.encoders[m].lin.weight)
        assert torch.equal(model.encoders[m].lin.weight, initial.encoders[m].lin.weight)
    student = copy.deepcopy(trained)
    student.encoders.load_state_dict(initial.encoders.state_dict())
    feats = encode(student, batch)
    loss = F.cross_entropy(concat_logits(student, feats, batch.n_paired), batch.paired_target)
    for m in tiny.modalities:
        teacher = trained.encoders[m](batch.inputs[m]).detach()
        loss = loss + 10.0 * batch.weights[m] * ((feats[m] - teacher) ** 2).mean()
    for m in tiny.modalities:
        assert_grads(model, grads(loss, list(student.encoders[m].parameters())),
                     lambda mod, m=m: mod.encoders[m].parameters(), atol=1e-6)


def test_umt_needs_the_runs_progress(tiny):
    learner = learner_of(tiny, "umt")
    with pytest.raises(ValueError, match="umt needs the run's progress"):
        learner.step([8, 8])
# --- opm --------------------------------------------------------------------------------------------------------

def test_opm_drop_probabilities_for_known_scores():
    q = opm_drop_probabilities(torch.tensor([30.0, 10.0]), q_base=0.5, lam=0.5)
    # rho(a) = 3: q(a) = 0.5 (1 + 0.5 tanh(3 - 1)); the modality behind is never dropped
    assert q.tolist() == pytest.approx([0.5 * (1 + 0.5 * math.tanh(2.0)), 0.0], abs=1e-6)
    assert opm_drop_probabilities(torch.tensor([5.0, 5.0]), 0.5, 0.5).tolist() == [0.0, 0.0]
    # three modalities: rho(m) = s(m) / mean of the others; the lowest score is never dropped
    q3 = opm_drop_probabilities(torch.tensor([6.0, 4.0, 1.0]), 0.4, 1.0)
    assert q3.tolist() == pytest.approx([0.4 * (1 + math.tanh(6 / 2.5 - 1)), 0.4 * (1 + math.tanh(4 / 3.5 - 1)), 0.0])
    assert opm_drop_probabilities(torch.tensor([100.0, 1.0]), 0.9, 1.0).tolist() == pytest.approx([1.0, 0.0])


def test_opm_drops_the_leading_modalitys_features_and_rescales(tiny):
    learner, batch, ref = one_step(tiny, "opm", p_exe=1.0, start=0.0)
    n, y = batch.n_paired, batch.paired_target
    feats = encode(ref, batch)
    w, b = ref.fusion.weight.detach(), ref.fusion.bias.detach()
    # OGM-GE's scores: the fusion head split by modality, bias / 2 each
    s = torch.stack([F.softmax(feats[m][:n].detach() @ w[:, c].T + b / 2, 1)[torch.arange(n), y].sum()
                     for m, c in (("a", slice(0, 5)), ("b", slice(5, 10)))])
    lead = int(s.argmax())
    q = torch.zeros(2)
    q[lead] = 0.5 * (1 + 0.5 * math.tanh(float(s[lead] / s[1 - lead]) - 1))
    theta = (5 * q[0] + 5 * q[1]) / 10
    g = torch.Generator().manual_seed(3 + 6143)  # the method's generator: the execute draw, then the masks
    torch.rand((), generator=g)
    keep = (torch.rand(n, 2, generator=g) >= q).float()
    assert keep[:, lead].min() == 0 and keep[:, 1 - lead].min() == 1  # some leading features dropped, none behind
    dropped = {m: feats[m][:n] * keep[:, k : k + 1] / (1 - theta) for k, m in enumerate(("a", "b"))}
    loss = F.cross_entropy(concat_logits(ref, dropped, n), y)
    for m in tiny.modalities:
        assert_grads(learner.model, grads(loss, list(ref.encoders[m].parameters())),
                     lambda model, m=m: model.encoders[m].parameters(), atol=1e-5)
    # never executed (or outside the window: its warm-up): the plain fusion CE, as joint
    for kwargs in ({"p_exe": 0.0, "start": 0.0}, {"p_exe": 1.0, "start": 0.5}):
        plain, batch, ref = one_step(tiny, "opm", progress=0.2, **kwargs)
        fusion = F.cross_entropy(concat_logits(ref, encode(ref, batch), n), y)
        assert_grads(plain.model, grads(fusion, list(ref.encoders["a"].parameters())),
                     lambda model: model.encoders["a"].parameters())


# --- amco -------------------------------------------------------------------------------------------------------

def test_amco_mask_schedule_mask_and_shares():
    # l_t = iteration in the epoch * epoch / 10; p_t = sin(pi/2 min(0.3, l_t) / 0.3)
    assert mask_ratio(7, 0, 0.3, 0.1) == 0.0  # nothing masked in the first epoch
    assert mask_ratio(1, 1, 0.3, 0.1) == pytest.approx(math.sin(math.pi / 6))
    assert mask_ratio(3, 1, 0.3, 0.1) == pytest.approx(1.0) and mask_ratio(1, 5, 0.3, 0.1) == pytest.approx(1.0)
    mask = class_mask(10, 0.55, torch.Generator().manual_seed(0))
    assert sorted(mask.tolist()) == [0.0] * 5 + [1.0] * 5
    a, b = torch.tensor([[2.0, 0.0], [0.0, 0.0]]), torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    e = math.exp
    want_a = ((e(2) + 1) / (e(2) + 3) + 2 / (2 + 2 * e(1))) / 2  # softmax over the 4 entries of each row
    assert dependence_shares([a, b]).tolist() == pytest.approx([want_a, 1 - want_a])


def test_amco_masks_the_dependent_modalitys_logits_and_co_optimises(tiny):
    learner = learner_of(tiny, "amco")
    method = learner.method
    method.dependent = torch.tensor([True, False])
    method.epoch, method.iteration_in_epoch = 1, 1  # p_t = sin(pi/6) = 0.5: one of 3 classes masked
    batch = hand_batch(tiny)
    batch.epoch = 1
    ref = copy.deepcopy(learner.model)
    method.step(learner._context, batch)
    mask = torch.ones(3)
    mask[torch.randperm(3, generator=torch.Generator().manual_seed(3 + 3571))[:1]] = 0.0
    feats = encode(ref, batch)
    w, b, star = ref.fusion.weight, ref.fusion.bias, ref.amco_head
    out = {"a": (feats["a"] @ w[:, :5].T + b / 2) * mask, "b": feats["b"] @ w[:, 5:].T + b / 2}
    n, y = batch.n_paired, batch.paired_target
    fused = star(out["a"][:n] + out["b"][:n])
    loss = (F.cross_entropy(fused, y) + batch.weights["a"] * F.cross_entropy(out["a"], batch.targets["a"])
            + batch.weights["b"] * F.cross_entropy(out["b"], batch.targets["b"]))
    for m in tiny.modalities:
        assert_grads(learner.model, grads(loss, list(ref.encoders[m].parameters())),
                     lambda model, m=m: model.encoders[m].parameters(), atol=1e-5)
    assert_grads(learner.model, grads(loss, [w, star.weight]),
                 lambda model: [model.fusion.weight, model.amco_head.weight], atol=1e-5)
    # the dependence for the next iteration: share of a softmax over [out_a, out_b] on the paired samples
    probs = torch.cat([out["a"][:n], out["b"][:n]], 1).softmax(1)
    share_a = float(probs[:, :3].sum(1).mean().detach())
    assert method.dependent.tolist() == [share_a > 0.5, 1 - share_a > 0.5]
    # evaluation: the fusion head's logits through the C x C layer
    x = tiny.splits["test"].features
    model = learner.model
    h = torch.cat([model.encoders["a"](x["a"]), model.encoders["b"](x["b"])], 1)
    _, probs_test = learner.predict(tiny.splits["test"])
    assert np.allclose(probs_test, model.amco_head(model.fusion(h)).softmax(1).detach().numpy(), atol=1e-5)


# --- cml --------------------------------------------------------------------------------------------------------

def test_cml_confidence_penalty_by_hand():
    y = torch.tensor([0, 0, 0])
    # sample 0: both right, confidence rises when a modality is removed (counted);
    # sample 1: removing it fixed a wrong prediction (left out); sample 2: both wrong (counted, "more" detached)
    more = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.5]], requires_grad=True)
    fewer = torch.tensor([[2.0, 0.0], [3.0, 0.0], [0.0, 2.0]], requires_grad=True)
    conf = lambda x: x.softmax(1).max(1).values  # noqa: E731
    c_more, c_fewer = conf(more.detach()), conf(fewer.detach())
    want = float((c_fewer[0] - c_more[0]) + (c_fewer[2] - c_more[2]))
    penalty = confidence_penalty(more, fewer, y)
    assert float(penalty) == pytest.approx(want)
    penalty.backward()
    assert more.grad[1:].abs().sum() == 0 and more.grad[0].abs().sum() > 0  # sample 2 pushes "fewer" only
    assert fewer.grad[1].abs().sum() == 0 and fewer.grad[2].abs().sum() > 0
    assert float(confidence_penalty(more, fewer, y, margin=1.0)) == 0.0
    assert sorted(removal_order(3, 0, 4)) == [0, 1, 2] and removal_order(3, 0, 4) == removal_order(3, 0, 4)


def test_cml_removes_modalities_and_penalises_rising_confidence(tiny):
    learner, batch, ref = one_step(tiny, "cml")
    n, y = batch.n_paired, batch.paired_target
    feats = encode(ref, batch)
    full = concat_logits(ref, feats, n)
    first = removal_order(2, 3, 0)[0]
    cols = slice(0, 5) if first == 0 else slice(5, 10)
    m = tiny.modalities[first]
    w, b = ref.fusion.weight, ref.fusion.bias
    removed = full - (feats[m][:n] @ w[:, cols].T + b / 2) + b / 2  # BalanceBenchmark: out - out_m + bias / M
    p_full, p_removed = full.softmax(1), removed.softmax(1)
    c_full, pred_full = p_full.max(1)
    c_removed, pred_removed = p_removed.max(1)
    counted = ~((pred_removed == y) & (pred_full != y))
    both_wrong = (pred_removed != y) & (pred_full != y)
    anchor = torch.where(both_wrong, c_full.detach(), c_full)
    penalty = (F.relu(c_removed - anchor) * counted.float()).sum()
    loss = (F.cross_entropy(full, y) + F.cross_entropy(removed, y)) / 2 + 0.1 * penalty
    assert float(penalty) > 0  # the regulariser is active on this batch
    for x in tiny.modalities:
        assert_grads(learner.model, grads(loss, list(ref.encoders[x].parameters())),
                     lambda model, x=x: model.encoders[x].parameters(), atol=1e-5)
    assert_grads(learner.model, grads(loss, [w, b]), lambda model: [model.fusion.weight, model.fusion.bias],
                 atol=1e-5)


def test_opm_amco_cml_with_three_modalities_and_a_count_of_zero():
    task = make_task("synthetic", n_samples=300, dominant_dim=16, weak_dim=8, hidden_dim=8, n_weak=2)
    for method in ("opm", "amco", "cml"):
        for fusion in ("concat", "sum"):
            learner = Learner(task, LearnerConfig(batch_size=16, method=method, fusion=fusion), seed=0)
            for counts in ([8, 24, 16], [0, 16, 16], [16, 16, 16], [16, 0, 8]):
                assert learner.step(counts, progress=0.5).finite, (method, fusion, counts)


# --- shared -----------------------------------------------------------------------------------------------------

def test_methods_validate_their_names_and_arguments():
    with pytest.raises(ConfigError, match="did you mean 'ogm-ge'"):
        make_method("ogmge")
    with pytest.raises(ConfigError, match=r"unknown learner.method_kwargs key 'alpha' \(valid keys: \['gamma'\]\)"):
        make_method("mmpareto", alpha=1.0)
    with pytest.raises(ConfigError, match="'learner.method_kwargs.ge' must be true or false"):
        make_method("ogm-ge", ge="false")  # a string is not a bool (it would have turned the noise on)
    with pytest.raises(ConfigError, match="alpha must be > 0"):
        make_method("ogm-ge", alpha=0.0)
    for name, kwargs, message in (("opm", {"q_base": 1.5}, "q_base must be in"), ("opm", {"p_exe": -0.1}, "p_exe"),
                                  ("amco", {"sigma": 1.0}, "sigma must be in"), ("amco", {"eps": 0.0}, "eps must be"),
                                  ("cml", {"lam": -1.0}, "lam must be"), ("cml", {"start": 0.9, "end": 0.1}, "start")):
        with pytest.raises(ConfigError, match=message):
            make_method(name, **kwargs)
    with pytest.raises(ConfigError, match="relearning init must be one of"):
        make_method("relearning", init="random")
    with pytest.raises(ConfigError, match="relearning period must be >= 1"):
        make_method("relearning", period=0)
    with pytest.raises(ConfigError, match="sample warmup must be >= 0"):
        make_method("sample", warmup=-1)
    assert sorted(METHODS) == ["agm", "amco", "cml", "g-blending", "greedy", "joint", "lfm", "mbsd", "mla", "mmcosine",
                               "mmpareto", "ogm-ge", "opm", "pmr", "reconboost", "relearning", "sample", "umt",
                               "unimodal-aux"]


@pytest.mark.parametrize("method", ["greedy", "reconboost", "umt"])
def test_alternating_methods_take_three_modalities_and_zero_counts(method):
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(90) % 3
    x = {"a": torch.randn(90, 4, generator=g) + labels[:, None], "b": torch.randn(90, 3, generator=g),
         "c": torch.randn(90, 2, generator=g) - labels[:, None]}

    def split(rows):
        return MultimodalSplit({m: v[rows] for m, v in x.items()}, labels[rows])

    task3 = Task("tiny3", ("a", "b", "c"), 3, {"train": split(slice(0, 60)), "val": split(slice(60, 75)),
                                               "test": split(slice(75, 90))},
                 {"a": lambda: TanhEncoder(4, 5), "b": lambda: TanhEncoder(3, 5), "c": lambda: TanhEncoder(2, 6)})
    kwargs = {"greedy": {"start_epoch": 0}, "reconboost": {"boost_epochs": 0.5, "correct_epochs": 0.5}}
    learner = learner_of(task3, method, **kwargs.get(method, {}))
    for t, counts in enumerate([[8, 16, 4], [0, 8, 8], [16, 0, 0], [4, 4, 12]] * 10):
        assert np.isfinite(learner.step(counts, progress=t / 40).loss)
    fused, unimodal = learner.accuracies("val")
    assert 0.0 <= fused <= 1.0 and set(unimodal) == {"a", "b", "c"}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_learns_with_dus_counts(task, method):
    config = LearnerConfig(batch_size=16, method=method)
    learner = Learner(task, config, seed=0)
    chance = 1 / task.n_classes
    first = learner.accuracies("val")[0]
    for t in range(150):
        stats = learner.step([8, 24] if t % 2 else [16, 16], progress=t / 150)
        assert stats.finite
    fused, unimodal = learner.accuracies("val")
    assert fused > max(2.5 * chance, first + 0.1), (method, first, fused)
    assert learner.samples_seen.tolist() == [75 * 8 + 75 * 16, 75 * 24 + 75 * 16]
    assert learner.optimizer_steps == (300 if method == "mla" else 150)


@pytest.mark.parametrize("method", ["mla", "pmr", "agm", "g-blending", "ogm-ge", "greedy", "reconboost", "umt", "opm",
                                    "amco", "cml"])
def test_a_checkpoint_keeps_the_methods_state(task, tmp_path, method):
    learner = learner_of(task, method)
    for t in range(3):
        learner.step([16, 8], progress=t / 10)
    learner.save(tmp_path / "learner.pt")
    other = learner_of(task, method)
    other.load(tmp_path / "learner.pt")
    assert other.optimizer_steps == learner.optimizer_steps
    assert [other.step([8, 16], progress=0.3).loss for _ in range(2)] == \
        [learner.step([8, 16], progress=0.3).loss for _ in range(2)]


def test_a_umt_checkpoint_after_the_switch_keeps_the_teachers(task, tmp_path):
    learner = learner_of(task, "umt", teacher_fraction=0.15)
    for t in range(3):
        learner.step([16, 8], progress=t / 10)
    assert learner.method.teachers is not None
    learner.save(tmp_path / "learner.pt")
    other = learner_of(task, "umt", teacher_fraction=0.15)
    other.load(tmp_path / "learner.pt")
    assert [other.step([8, 16], progress=0.3).loss for _ in range(2)] == \
        [learner.step([8, 16], progress=0.3).loss for _ in range(2)]
@pytest.mark.parametrize(("method", "kwargs"), [("sample", {"warmup": 1}), ("relearning", {"period": 1, "count": 2}),
                                              ("relearning", {"period": 1, "count": 2, "init": "fresh"})])
def test_a_checkpoint_resumes_the_data_level_methods_exactly(task, tmp_path, method, kwargs):
    learner = learner_of(task, method, **kwargs)
    for _ in range(12):  # 240 training samples, 48 a window: into epoch 2 (sample: copies part used; one re-init)
        learner.step([48, 24])
    assert (learner.method.cursor > 0) if method == "sample" else (learner.method.done == 1)
    learner.save(tmp_path / "learner.pt")
    other = learner_of(task, method, **kwargs)
    other.load(tmp_path / "learner.pt")
    # on through the next valuation / re-initialisation
    assert [other.step([48, 24]).loss for _ in range(6)] == [learner.step([48, 24]).loss for _ in range(6)]
    if method == "relearning":
        assert learner.method.done == other.method.done == 2


def test_a_checkpoint_of_another_head_layout_is_refused(task, tmp_path):
    learner_of(task, "unimodal-aux").save(tmp_path / "learner.pt")
    with pytest.raises(ValueError, match="saved by method 'unimodal-aux'.*shares a single head"):
        learner_of(task, "mla").load(tmp_path / "learner.pt")
    learner_of(task, "ogm-ge").load(tmp_path / "learner.pt")  # same layout: a warm start is allowed


# --- sample -----------------------------------------------------------------------------------------------------

def authors_copies(contribution: float) -> int:
    """The authors' re-sampling bins (AV_KS_Dataset_sample_level), written out."""
    if 0.4 < contribution < 1:
        return 1
    if -0.1 < contribution < 0.4:
        return 2
    if contribution < -0.1:
        return 3
    return 0


def test_sample_contributions_and_copies_by_hand():
    # every (audio right, both right, visual right) case of the authors' two-modality formula
    cases = [(a, av, v) for a in (0, 1) for av in (0, 1) for v in (0, 1)]
    correct = {frozenset({0}): torch.tensor([bool(a) for a, _, _ in cases]),
               frozenset({1}): torch.tensor([bool(v) for _, _, v in cases]),
               frozenset({0, 1}): torch.tensor([bool(av) for _, av, _ in cases])}
    phi = sample_contributions(correct, 2)
    want_a = [(a + 2.0 * av - v) / 2 for a, av, v in cases]  # value_all = 2.0 when the pair is right
    want_v = [(v + 2.0 * av - a) / 2 for a, av, v in cases]
    assert phi[:, 0].tolist() == want_a and phi[:, 1].tolist() == want_v
    pairs = zip(want_a, want_v, strict=True)
    assert resample_copies(phi).flatten().tolist() == [authors_copies(c) for row in pairs for c in row]
    # three modalities: only the full set right -> 1 each; {a} and the full set right -> 4/3, 5/6, 5/6
    subsets = [s for size in (1, 2, 3) for s in combinations(range(3), size)]
    only_all = {frozenset(s): torch.tensor([len(s) == 3]) for s in subsets}
    assert sample_contributions(only_all, 3)[0].tolist() == pytest.approx([1.0, 1.0, 1.0])
    a_and_all = {frozenset(s): torch.tensor([s in ((0,), (0, 1, 2))]) for s in subsets}
    phi3 = sample_contributions(a_and_all, 3)[0]
    # phi(b) = 1/6 (v(ab) - v(a)) + 1/3 (v(abc) - v(ac)) = -1/6 + 1
    assert phi3.tolist() == pytest.approx([1 / 3 + 1, 5 / 6, 5 / 6]) and float(phi3.sum()) == pytest.approx(3.0)
    assert resample_copies(torch.tensor([5 / 6, 1 / 6, -1 / 3, 4 / 3])).tolist() == [1, 2, 3, 0]


def test_sample_resamples_the_low_contributing_modality_by_hand(tiny):
    learner = learner_of(tiny, "sample", warmup=0)
    batch = hand_batch(tiny, (12, 20))
    ref = copy.deepcopy(learner.model)
    learner.method.step(learner._context, batch)
    method = learner.method
    train = tiny.splits["train"]
    x, y = train.features, train.labels
    with torch.no_grad():  # the valuation on the training split, as the authors' execute_modulation
        h = {m: ref.encoders[m](x[m]) for m in ("a", "b")}
        right = {key: concat_logits(ref, feats, len(y)).argmax(1) == y
                 for key, feats in (("av", h), ("a", {"a": h["a"], "b": torch.zeros_like(h["b"])}),
                                    ("v", {"a": torch.zeros_like(h["a"]), "b": h["b"]}))}
    planned = []
    for i in range(len(y)):
        value_all, value_a, value_v = 2.0 * right["av"][i], float(right["a"][i]), float(right["v"][i])
        planned += [(i, 0)] * authors_copies((value_a + value_all - value_v) / 2)
        planned += [(i, 1)] * authors_copies((value_v + value_all - value_a) / 2)
    got = list(zip(method.copy_index.tolist(), method.copy_modality.tolist(), strict=True))
    assert sorted(got) == sorted(planned) and len(planned) > 0
    taken = int(20 * len(planned) / len(y))  # a window of max(12, 20) samples takes its share of the copies
    assert method.cursor == taken
    feats = encode(ref, batch)
    loss = F.cross_entropy(concat_logits(ref, feats, batch.n_paired), batch.paired_target)
    for i, k in got[:taken]:  # each copy passes its modality's features alone (the other zeroed), weight 1/B
        h_k = ref.encoders["ab"[k]](x["ab"[k]][i : i + 1])
        pair = {"a": h_k, "b": torch.zeros(1, 5)} if k == 0 else {"a": torch.zeros(1, 5), "b": h_k}
        loss = loss + F.cross_entropy(concat_logits(ref, pair, 1), y[i : i + 1]) / B
    for m in tiny.modalities:
        assert_grads(learner.model, grads(loss, list(ref.encoders[m].parameters())),
                     lambda model, m=m: model.encoders[m].parameters(), atol=1e-6)
    assert_grads(learner.model, grads(loss, [ref.fusion.weight]), lambda model: [model.fusion.weight], atol=1e-6)


def test_sample_trains_jointly_during_the_warmup_and_values_once_per_epoch(tiny):
    learner, batch, ref = one_step(tiny, "sample", warmup=1)
    assert learner.method.valued_epoch == -1 and len(learner.method.copy_index) == 0
    feats = encode(ref, batch)
    fusion = F.cross_entropy(concat_logits(ref, feats, batch.n_paired), batch.paired_target)
    for m in tiny.modalities:  # joint training: the encoders see the fusion CE only
        assert_grads(learner.model, grads(fusion, list(ref.encoders[m].parameters())),
                     lambda model, m=m: model.encoders[m].parameters())
    later = IterationBatch(**{**batch.__dict__, "epoch": 1})
    learner.method.step(learner._context, later)
    order = learner.method.copy_index.clone()
    learner.method.step(learner._context, later)  # the same epoch: no new valuation, the copies go on
    assert learner.method.valued_epoch == 1 and torch.equal(learner.method.copy_index, order)


# --- relearning -------------------------------------------------------------------------------------------------

def test_relearning_scaling_kmeans_purity_and_strength():
    x = torch.tensor([[0.0, 5.0, 1.0], [2.0, 5.0, 3.0], [1.0, 5.0, 2.0]])
    # each column onto [-1, 1]; the constant column goes to -1 (scikit-learn's MinMaxScaler)
    assert minmax_scale(x).tolist() == [[-1.0, -1.0, -1.0], [1.0, -1.0, 1.0], [0.0, -1.0, 0.0]]
    assert purity(torch.tensor([0, 0, 1, 1, 0]), torch.tensor([0, 0, 1, 1, 1])) == pytest.approx(4 / 5)
    assert purity(torch.tensor([2, 2, 0]), torch.tensor([1, 1, 1])) == pytest.approx(2 / 3)
    assert relearning_strength(0.9, 0.7, 3.0) == pytest.approx(math.tanh(3.0 * 0.2))
    assert relearning_strength(0.7, 0.9, 3.0) == pytest.approx(math.tanh(3.0 * 0.2))  # |gap|
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    blobs = torch.cat([c + 0.5 * torch.randn(30, 2, generator=g) for c in centres])
    truth = torch.arange(3).repeat_interleave(30)
    clusters = kmeans(blobs, 3, torch.Generator().manual_seed(1))
    assert purity(truth, clusters) == 1.0 and len(set(clusters.tolist())) == 3
    # the fixed point of Lloyd's iterations: every row is nearest to the mean of its own cluster
    means = torch.stack([blobs[clusters == c].mean(0) for c in range(3)])
    assert torch.equal(torch.cdist(blobs.double(), means.double()).argmin(1), clusters)


def test_relearning_kmeans_purity_is_close_to_scikit_learns():
    sklearn_cluster = pytest.importorskip("sklearn.cluster")
    g = torch.Generator().manual_seed(4)
    labels = torch.arange(6).repeat_interleave(40)
    features = minmax_scale(torch.randn(6, 16, generator=g)[labels] + 1.2 * torch.randn(240, 16, generator=g))
    ours = purity(labels, kmeans(features, 6, torch.Generator().manual_seed(0)))
    theirs = purity(labels, torch.as_tensor(
        sklearn_cluster.KMeans(n_clusters=6, random_state=0, n_init=1).fit_predict(features.numpy())))
    assert abs(ours - theirs) <= 0.05, (ours, theirs)


def test_relearning_reinitialises_each_encoder_by_its_diagnosed_strength(tiny):
    learner = learner_of(tiny, "relearning", period=1, count=1, move_lambda=3.0)
    method = learner.method
    initial = copy.deepcopy(learner.model)
    batch = hand_batch(tiny)
    for _ in range(3):  # training before the re-initialisation (epoch 1 < period + 1)
        learner.step([12, 20], progress=None)
    assert method.done == 0
    before = copy.deepcopy(learner.model)
    generator = torch.Generator()
    generator.set_state(method.generator.get_state())
    learner.optimizer.zero_grad()
    method.step(learner._context, IterationBatch(**{**batch.__dict__, "epoch": 2}))  # period + 1 epochs done
    assert method.done == 1
    purities = {}
    for s in ("train", "val"):  # the clusterings in the method's order (they draw from one generator)
        split = tiny.splits[s]
        for m in tiny.modalities:
            h = before.encoders[m](split.features[m]).detach().double()
            low, high = h.min(0).values, h.max(0).values
            scaled = (h - low) / (high - low) * 2 - 1
            clusters = kmeans(scaled, 3, generator)  # the clustering itself is tested above
            table = torch.zeros(3, 3)
            for c, y in zip(clusters.tolist(), split.labels.tolist(), strict=True):
                table[c, y] += 1
            purities[s, m] = float(table.max(1).values.sum()) / len(clusters)
    alpha = {}
    for m in tiny.modalities:
        alpha[m] = math.tanh(3.0 * abs(purities["train", m] - purities["val", m]))
        assert method.strengths[m] == pytest.approx(alpha[m])
        for p, p0, p1 in zip(learner.model.encoders[m].parameters(), initial.encoders[m].parameters(),
                             before.encoders[m].parameters(), strict=True):
            assert torch.allclose(p, alpha[m] * p0 + (1 - alpha[m]) * p1, atol=1e-6)
    assert any(a > 0 for a in alpha.values())
    # the heads and the fusion head are not re-initialised
    assert torch.equal(learner.model.fusion.weight, before.fusion.weight)
    # then joint training from the re-initialised encoders
    reinit = copy.deepcopy(learner.model)
    feats = encode(reinit, batch)
    fusion = F.cross_entropy(concat_logits(reinit, feats, batch.n_paired), batch.paired_target)
    for m in tiny.modalities:
        assert_grads(learner.model, grads(fusion, list(reinit.encoders[m].parameters())),
                     lambda model, m=m: model.encoders[m].parameters())
    method.step(learner._context, IterationBatch(**{**batch.__dict__, "epoch": 3}))
    assert method.done == 1 and method.initial is None  # count = 1: done


def test_relearning_follows_the_authors_epochs_and_fresh_initialisations_are_seeded(tiny):
    learner = learner_of(tiny, "relearning")  # period 20: after epochs 20, 40 and 60 counted from 0
    batch = hand_batch(tiny)
    done = []
    for epoch in (20, 21, 22, 41, 61, 81):
        learner.method.step(learner._context, IterationBatch(**{**batch.__dict__, "epoch": epoch}))
        learner.optimizer.zero_grad()
        done.append(learner.method.done)
    assert done == [0, 1, 1, 2, 3, 3]
    rng = torch.get_rng_state()
    models = []
    for _ in range(2):
        other = learner_of(tiny, "relearning", period=1, init="fresh", move_lambda=50.0)
        other.method.step(other._context, IterationBatch(**{**batch.__dict__, "epoch": 2}))
        models.append(other.model)
    assert torch.equal(torch.get_rng_state(), rng)  # the fresh draw leaves the global generator alone
    for p, q in zip(models[0].encoders.parameters(), models[1].encoders.parameters(), strict=True):
        assert torch.equal(p, q)  # the same seed, the same fresh initialisation
# --- lfm --------------------------------------------------------------------------------------------------------

def authors_alignment(p_logits, q_logits):
    """The LFM authors' ``Alignment`` as written in their code: F.kl_div(log softmax, mixture), batchmean."""
    p, q = F.softmax(p_logits, -1), F.softmax(q_logits, -1)
    r = 0.5 * p + 0.5 * q
    return 0.5 * (F.kl_div(p.log(), r, reduction="batchmean") + F.kl_div(q.log(), r, reduction="batchmean"))


def tiny_parts(model, h_a, h_b):
    """The concatenation head split by modality: z_m = h_m W_m^T + b / 2."""
    w, b = model.fusion.weight, model.fusion.bias
    return h_a @ w[:, :5].T + b / 2, h_b @ w[:, 5:].T + b / 2


def test_lfm_alignment_is_the_authors_reversed_js():
    from dus_gym.core.methods.lfm import alignment_loss, mixture_divergence

    g = torch.Generator().manual_seed(1)
    p, q, r = (torch.randn(6, 4, generator=g) for _ in range(3))
    assert float(mixture_divergence(p, q)) == pytest.approx(float(authors_alignment(p, q)), rel=1e-5)
    P, Q = p.softmax(1), q.softmax(1)
    mix = (P + Q) / 2
    js = 0.5 * ((P * (P / mix).log()).sum(1).mean() + (Q * (Q / mix).log()).sum(1).mean())
    reverse = 0.5 * ((mix * (mix / P).log()).sum(1).mean() + (mix * (mix / Q).log()).sum(1).mean())
    assert float(mixture_divergence(p, q)) == pytest.approx(float(reverse), rel=1e-5)
    assert abs(float(mixture_divergence(p, q)) - float(js)) > 1e-3  # KL(r || p), not the JS divergence's KL(p || r)
    assert float(mixture_divergence(p, p)) == pytest.approx(0.0, abs=1e-6)
    pairs = [authors_alignment(p, q), authors_alignment(p, r), authors_alignment(q, r)]
    assert float(alignment_loss([p, q, r])) == pytest.approx(float(sum(pairs) / 3), rel=1e-5)


def lfm_hand_signal(model, x, y, alpha, eps=1e-5):
    """mean over the first encoder weight of H_total g_cls, by central differences of the gradient (float64)."""
    model = copy.deepcopy(model).double().eval()
    params = [*model.encoders["a"].parameters(), *model.encoders["b"].parameters(), *model.fusion.parameters()]

    def losses():
        za, zb = tiny_parts(model, model.encoders["a"](x["a"].double()), model.encoders["b"](x["b"].double()))
        ce = F.cross_entropy((za + zb) / 2, y)  # the authors' CE(0.5 o_a + 0.5 o_v)
        return ce, (1 - alpha) * ce + alpha * authors_alignment(za, zb)

    g_cls = torch.autograd.grad(losses()[0], params)

    def first_block(sign):
        with torch.no_grad():
            for p, g in zip(params, g_cls, strict=True):
                p.add_(sign * eps * g)
        grad = torch.autograd.grad(losses()[1], params[0])[0]
        with torch.no_grad():
            for p, g in zip(params, g_cls, strict=True):
                p.sub_(sign * eps * g)
        return grad

    return float(((first_block(1) - first_block(-1)) / (2 * eps)).mean())


def test_lfm_alpha_step_and_loss_by_hand(tiny):
    learner, batch, ref = one_step(tiny, "lfm", alpha=0.5, lr_alpha=1.0)
    method = learner.method
    val = tiny.splits["val"].subset(method.val_index)
    assert len(val) == 8
    signal = lfm_hand_signal(ref, val.features, val.labels, 0.5)
    assert signal != 0 and (0.5 - method.alpha) == pytest.approx(signal, rel=1e-3)  # lr_alpha = 1
    alpha = method.alpha
    feats = encode(ref, batch)
    n, y = batch.n_paired, batch.paired_target
    za, zb = tiny_parts(ref, feats["a"][:n], feats["b"][:n])
    loss = 2 * ((1 - alpha) * F.cross_entropy((za + zb) / 2, y) + alpha * authors_alignment(za, zb))
    for m in tiny.modalities:
        assert_grads(learner.model, grads(loss, list(ref.encoders[m].parameters())),
                     lambda model, m=m: model.encoders[m].parameters(), atol=1e-5)
    assert_grads(learner.model, grads(loss, [ref.fusion.weight, ref.fusion.bias]),
                 lambda model: [model.fusion.weight, model.fusion.bias], atol=1e-5)
    # the monitor head of b learns on its own 20 samples, on detached features
    head = F.cross_entropy(feats["b"].detach() @ ref.heads["b"].weight.T + ref.heads["b"].bias, batch.targets["b"])
    assert_grads(learner.model, grads(head, [ref.heads["b"].weight]), lambda model: [model.heads["b"].weight])
    # once per epoch: the same epoch leaves alpha alone; lr_alpha halves at each multiple of 20 epochs passed
    learner.method.step(learner._context, batch)
    assert method.alpha == alpha and method.lr_alpha == 1.0
    learner.method.step(learner._context, IterationBatch(**{**batch.__dict__, "epoch": 19}))
    assert method.lr_alpha == 1.0 and method.alpha != alpha
    learner.method.step(learner._context, IterationBatch(**{**batch.__dict__, "epoch": 20}))
    assert method.lr_alpha == 0.5
    learner.method.step(learner._context, IterationBatch(**{**batch.__dict__, "epoch": 61}))
    assert method.lr_alpha == 0.5 / 4  # 40 and 60 passed
    # evaluation fuses the mean of the parts, as training
    _, fused = learner.predict(tiny.splits["test"])
    model, x = learner.model, tiny.splits["test"].features
    za, zb = tiny_parts(model, model.encoders["a"](x["a"]), model.encoders["b"](x["b"]))
    assert np.allclose(fused, ((za + zb) / 2).softmax(1).detach().numpy(), atol=1e-5)


def test_lfm_keeps_alpha_in_its_bounds_and_checks_its_arguments(tiny):
    learner, _, _ = one_step(tiny, "lfm", alpha=0.95, lr_alpha=1e6)
    assert learner.method.alpha in (0.05, 0.95)
    with pytest.raises(ConfigError, match=r"lfm alpha must be in \[0.05, 0.95\]"):
        make_method("lfm", alpha=1.0)
    with pytest.raises(ConfigError, match="lfm val_samples must be >= 1"):
        make_method("lfm", val_samples=0)


def test_lfm_checkpoint_keeps_alpha_and_the_validation_batch(task, tmp_path):
    test_a_checkpoint_keeps_the_methods_state(task, tmp_path, "lfm")
    learner = learner_of(task, "lfm", lr_alpha=10.0)
    learner.step([16, 8], progress=0.0)
    learner.save(tmp_path / "lfm.pt")
    other = learner_of(task, "lfm", lr_alpha=10.0)
    other.load(tmp_path / "lfm.pt")
    assert other.method.alpha == learner.method.alpha and other.method.updated_epoch == 0
    assert torch.equal(other.method.val_index, learner.method.val_index)


# --- mbsd -------------------------------------------------------------------------------------------------------

def mbsd_hand_pair(za, zb, y):
    """BalanceBenchmark's per-sample loop, its KL with log-probabilities as F.kl_div's input: KL(p_s || p_w)."""
    pa, pb = za.softmax(1), zb.softmax(1)
    total = 0
    for i in range(len(y)):
        a_i, b_i = pa[i, y[i]], pb[i, y[i]]
        strong, weak = (a_i, b_i) if a_i >= b_i else (b_i, a_i)
        right = bool(za[i].argmax() == y[i]) or bool(zb[i].argmax() == y[i])
        weight = strong - weak if right else 0.0
        kl = F.kl_div(weak.log(), strong, reduction="none")
        total = total + weight * (((za[i] - zb[i]) ** 2).sum() / za.shape[1] + kl)
    return total / len(y)


def test_mbsd_pair_term_by_hand_for_two_and_three_modalities():
    from dus_gym.core.methods.mbsd import mbsd_loss, mbsd_pair_loss

    g = torch.Generator().manual_seed(2)
    y = torch.arange(12) % 4
    za, zb, zc = (torch.randn(12, 4, generator=g) for _ in range(3))
    right = (za.argmax(1) == y) | (zb.argmax(1) == y)
    assert 0 < int(right.sum()) < 12  # both branches of the weight are exercised
    assert float(mbsd_pair_loss(za, zb, y)) == pytest.approx(float(mbsd_hand_pair(za, zb, y)), rel=1e-5)
    pairs = [mbsd_hand_pair(za, zb, y), mbsd_hand_pair(za, zc, y), mbsd_hand_pair(zb, zc, y)]
    assert float(mbsd_loss([za, zb, zc], y)) == pytest.approx(float(sum(pairs) / 3), rel=1e-5)
    assert float(mbsd_pair_loss(za, za, y)) == 0.0


def test_mbsd_gradients_by_hand(tiny):
    learner, batch, ref = one_step(tiny, "mbsd", progress=0.5)
    feats = encode(ref, batch)
    n, y = batch.n_paired, batch.paired_target
    za, zb = tiny_parts(ref, feats["a"], feats["b"])  # on each modality's own 12 and 20 samples
    loss = (F.cross_entropy(concat_logits(ref, feats, n), y)
            + batch.weights["a"] * F.cross_entropy(za, batch.targets["a"])
            + batch.weights["b"] * F.cross_entropy(zb, batch.targets["b"])
            + mbsd_hand_pair(za[:n], zb[:n], y))
    for m in tiny.modalities:
        assert_grads(learner.model, grads(loss, list(ref.encoders[m].parameters())),
                     lambda model, m=m: model.encoders[m].parameters(), atol=1e-5)
    assert_grads(learner.model, grads(loss, [ref.fusion.weight, ref.fusion.bias]),
                 lambda model: [model.fusion.weight, model.fusion.bias], atol=1e-5)
    # outside the window: the fusion CE alone (and the monitors)
    learner, batch, ref = one_step(tiny, "mbsd", progress=0.5, end=0.4)
    feats = encode(ref, batch)
    fusion = F.cross_entropy(concat_logits(ref, feats, n), y)
    for m in tiny.modalities:
        assert_grads(learner.model, grads(fusion, list(ref.encoders[m].parameters())),
                     lambda model, m=m: model.encoders[m].parameters(), atol=1e-6)


@pytest.mark.parametrize("method", ["lfm", "mbsd"])
def test_lfm_and_mbsd_with_three_modalities_and_an_empty_count(method):
    from dus_gym.core.task import MultimodalSplit, Task

    g = torch.Generator().manual_seed(0)
    n = 60
    labels = torch.arange(n) % 3
    x = {m: torch.randn(n, 4, generator=g) + k * labels[:, None].float() for k, m in enumerate(("a", "b", "c"))}

    def split(rows):
        return MultimodalSplit({m: v[rows] for m, v in x.items()}, labels[rows])

    three = Task("three", ("a", "b", "c"), 3, {"train": split(slice(0, 40)), "val": split(slice(40, 50)),
                                                "test": split(slice(50, 60))},
                 {m: (lambda: MLPEncoder(4, 6)) for m in ("a", "b", "c")})
    learner = learner_of(three, method)
    for counts in ([8, 16, 12], [0, 16, 8], [16, 16, 16]):
        assert learner.step(counts, progress=0.2).finite
    with pytest.raises(ConfigError, match="is defined for"):
        check_method_fusion(method, "gated")
