"""``reconboost``: Hua et al., "ReconBoost: Boosting Can Achieve Modality Reconcilement", ICML 2024."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from dus_gym.core.config import ConfigError
from dus_gym.core.methods.base import IterationBatch, Method, MethodOutput, StepContext, nan_scalar
from dus_gym.core.objectives import head_terms

BOOST_RATE = "reconboost_rate"
"""The name of the ensemble's learnable boost rate on the model (it joins the optimiser and the checkpoint)."""


class Phase(NamedTuple):
    """Where an iteration falls in ReconBoost's schedule."""

    stage: int
    """Stages completed before this one (stage k trains modality k mod M)."""
    learner: int
    """Index of the modality of this stage."""
    boosting: bool
    """True in the stage's boosting phase, False in its global rectification phase."""
    ensemble: tuple[int, ...]
    """Indices of the modalities in the ensemble (the learners of the earlier stages, and this stage's once its
    boosting phase is over), in modality order."""


def reconboost_phase(position: float, boost_epochs: float, correct_epochs: float, n_modalities: int) -> Phase:
    """The phase at ``position`` epochs into the data walk: stages of boost_epochs + correct_epochs epochs."""
    length = boost_epochs + correct_epochs
    stage = int(position // length)
    learner = stage % n_modalities
    boosting = position - stage * length < boost_epochs
    done = {k % n_modalities for k in range(min(stage, n_modalities))} | (set() if boosting else {learner})
    return Phase(stage, learner, boosting, tuple(sorted(done)))


def boosting_loss(logits: torch.Tensor, ensemble_logits: torch.Tensor | None, labels: torch.Tensor,
                  weight1: float, weight2: float) -> torch.Tensor:
    """ReconBoost's boosting loss of the stage's learner: the mean over samples of the authors' form.

    -w1 mean_c(y_c log p_c) + w2 mean_c(y_c q_c log p_c) = -(w1 - w2 q_y) log p_y / C,

    with p the learner's softmax and q the softmax of the other modalities' ensemble (detached):
    samples the ensemble already classifies well pull the learner less (the reconcilement). Without an
    ensemble (the first stage) q_y = 1, as the authors' scalar initial ensemble gives.
    """
    log_p = logits.float().log_softmax(1).gather(1, labels.view(-1, 1)).squeeze(1)
    if ensemble_logits is None:
        q = torch.ones_like(log_p)
    else:
        q = ensemble_logits.detach().float().softmax(1).gather(1, labels.view(-1, 1)).squeeze(1)
    return (-(weight1 - weight2 * q) * log_p).mean() / logits.shape[1]


class ReconBoost(Method):
    """Alternating boosting with modality reconcilement (Hua et al., ICML 2024).

    Training runs in stages of ``boost_epochs + correct_epochs`` epochs of the data walk; stage k
    belongs to modality k mod M. In its boosting phase only that modality's encoder and head learn,
    on :func:`boosting_loss` against the ensemble of the modalities already boosted; in the
    rectification phase the ensemble rate * sum_m head_m(encoder_m(x_m)) (the modalities boosted so
    far, rate a learnable scalar) learns on its CE with every parameter. The fused prediction is that
    ensemble; the fusion head is not used. Both losses are on the paired samples; each modality's
    head is its learner, so its CE and status on its own n(m) samples are reported (CMD).

    Args:
        boost_epochs: epochs of a stage's boosting phase (the authors' ``epochs_per_stage``, 4).
        correct_epochs: epochs of its rectification phase (the authors' ``correct_epoch``, 4).
        weight1: weight of the learner's CE in the boosting loss (5.0).
        weight2: weight of the reconcilement term (1.0).
        boost_rate: the rate's starting value (the authors' 1.0).
    """

    name = "reconboost"
    fusions = ("concat",)  # the fusion head is not used: other fusion settings would mislead

    def __init__(self, boost_epochs: float = 4.0, correct_epochs: float = 4.0, weight1: float = 5.0,
                 weight2: float = 1.0, boost_rate: float = 1.0) -> None:
        if not boost_epochs > 0 or not correct_epochs >= 0:
            raise ConfigError(f"reconboost needs boost_epochs > 0 and correct_epochs >= 0, got {boost_epochs}, "
                              f"{correct_epochs}")
        if not weight1 >= 0 or not weight2 >= 0:
            raise ConfigError(f"reconboost weight1 and weight2 must be >= 0, got {weight1}, {weight2}")
        self.boost_epochs, self.correct_epochs = float(boost_epochs), float(correct_epochs)
        self.weight1, self.weight2, self.boost_rate = float(weight1), float(weight2), float(boost_rate)

    def setup(self, model: nn.Module, modalities: tuple[str, ...], device: torch.device, seed: int) -> None:
        """Add the boost rate to the model; until the first step the fused prediction reads every modality."""
        super().setup(model, modalities, device, seed)
        model.register_parameter(BOOST_RATE, nn.Parameter(torch.tensor(self.boost_rate, device=device)))
        self.ensemble: tuple[int, ...] = tuple(range(len(modalities)))

    def ensemble_logits(self, model: nn.Module, logits: list[torch.Tensor], members: tuple[int, ...]) -> torch.Tensor:
        """The ensemble's logits: rate * sum of the members' logits."""
        rate = getattr(model, BOOST_RATE)
        return rate.to(logits[members[0]].dtype) * torch.stack([logits[k] for k in members]).sum(0)

    def fusion_logits(self, model: nn.Module, features: list[torch.Tensor]) -> torch.Tensor:
        """The ensemble of the modalities boosted so far (every modality before the first step)."""
        logits = [model.heads[m](h) for m, h in zip(self.modalities, features, strict=True)]
        return self.ensemble_logits(model, logits, self.ensemble or tuple(range(len(self.modalities))))

    def step(self, ctx: StepContext, batch: IterationBatch) -> MethodOutput:
        """The boosting loss of the stage's modality, or the ensemble's CE, on the paired samples."""
        phase = reconboost_phase(batch.epoch + batch.epoch_fraction, self.boost_epochs, self.correct_epochs,
                                 len(self.modalities))
        if not phase.boosting:
            self.ensemble = phase.ensemble
        model = ctx.model
        device = next(iter(batch.targets.values())).device
        ces, status, logits = {}, {}, {}
        with ctx.autocast():
            for m, x in batch.inputs.items():
                logits[m] = model.heads[m](ctx.encoders[m](x))
                ces[m], status[m] = head_terms(logits[m], batch.targets[m])
        n, fusion = batch.n_paired, nan_scalar(device)
        if n == 0:
            return MethodOutput(torch.zeros((), device=device), fusion, ces, status)
        paired = [logits[m][:n] for m in self.modalities]
        if phase.boosting:
            others = tuple(k for k in phase.ensemble if k != phase.learner)
            ensemble = self.ensemble_logits(model, paired, others).detach() if others else None
            loss = boosting_loss(paired[phase.learner], ensemble, batch.paired_target, self.weight1, self.weight2)
        else:
            fusion = F.cross_entropy(self.ensemble_logits(model, paired, phase.ensemble).float(), batch.paired_target)
            loss = fusion
        loss.backward()
        return MethodOutput(loss, fusion, ces, status)

    def state_dict(self) -> dict[str, Any]:
        """The ensemble the fused prediction reads (the boost rate is in the model)."""
        return {"ensemble": list(self.ensemble)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        if "ensemble" in state:
            self.ensemble = tuple(int(k) for k in state["ensemble"])
