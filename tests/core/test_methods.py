"""The balancing methods: each formula against a hand computation on a tiny batch, and each method in a learner.

The expected values are computed here from the papers' and authors' formulas, written out with
plain tensor operations (never with the implementation's own helpers), on a tiny task whose
encoders are one tanh layer.
"""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar

from dus_gym.core.config import ConfigError, LearnerConfig
from dus_gym.core.learner import Learner
from dus_gym.core.methods import METHODS, IterationBatch, check_method_fusion, make_method
from dus_gym.core.methods.agm import agm_coefficients, agm_responses
from dus_gym.core.methods.gblending import blending_weights, super_epoch_iterations
from dus_gym.core.methods.mla import entropy_fusion, mla_projector_update
from dus_gym.core.methods.mmpareto import mmpareto_weights
from dus_gym.core.methods.ogm_ge import modulated_parameters, noise_scale, ogm_ge_coefficients
from dus_gym.core.methods.pmr import pmr_coefficients
from dus_gym.core.task import MLPEncoder, SmallCNNEncoder
from dus_gym.tasks import make_task

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


def test_g_blending_fixed_weights_need_one_per_head(tiny):
    with pytest.raises(ConfigError, match="need 3 entries"):
        learner_of(tiny, "g-blending", weights=[0.5, 0.5])


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
    assert sorted(METHODS) == ["agm", "g-blending", "joint", "mla", "mmcosine", "mmpareto", "ogm-ge", "pmr",
                               "unimodal-aux"]


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


@pytest.mark.parametrize("method", ["mla", "pmr", "agm", "g-blending", "ogm-ge"])
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


def test_a_checkpoint_of_another_head_layout_is_refused(task, tmp_path):
    learner_of(task, "unimodal-aux").save(tmp_path / "learner.pt")
    with pytest.raises(ValueError, match="saved by method 'unimodal-aux'.*shares a single head"):
        learner_of(task, "mla").load(tmp_path / "learner.pt")
    learner_of(task, "ogm-ge").load(tmp_path / "learner.pt")  # same layout: a warm start is allowed
