"""``opm``: Wei, Hu, Du and Wen, "On-the-fly Modulation for Balanced Multimodal Learning", TPAMI 2024 (OPM)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dus_gym.core.config import ConfigError
from dus_gym.core.methods.base import (
    IterationBatch,
    Method,
    MethodOutput,
    StepContext,
    forward,
    in_window,
    modality_scores,
    total_loss,
)


def opm_drop_probabilities(scores: torch.Tensor, q_base: float, lam: float) -> torch.Tensor:
    """OPM's drop probability q(m) of every modality's features (the authors' ``calcu_q``).

    With the discrepancy ratio rho(m) = s(m) / s(other) for two modalities (ours for M > 2:
    s(m) / mean of the others), q(m) = q_base (1 + lam tanh(rho(m) - 1)) when rho(m) > 1 (the
    leading modality), else 0; clipped to [0, 1]. The modality with the lowest score always has
    q = 0 (its score is at most the mean of the others').
    """
    M = scores.numel()
    if M < 2:
        raise ValueError("OPM needs at least two modalities")
    others = (scores.sum() - scores) / (M - 1)
    ratio = scores / others.clamp_min(1e-12)
    lead = torch.tanh(torch.relu(ratio - 1))
    q = torch.where(lead > 0, q_base * (1 + lam * lead), torch.zeros_like(lead))
    return q.clamp(0.0, 1.0)


def drop_features(features: list[torch.Tensor], q: torch.Tensor, execute: torch.Tensor,
                  generator: torch.Generator) -> list[torch.Tensor]:
    """Each sample's features of modality m zeroed with probability q(m), all rescaled by 1 / (1 - theta).

    theta = sum_m d(m) q(m) / sum_m d(m) (d(m): m's feature size), the expected share of dropped
    feature entries (the authors' ``Modality_drop``). ``execute`` (a 0-d bool) says whether the drop
    happens this iteration; when not, the features are returned unchanged.
    """
    n = features[0].shape[0]
    dims = torch.tensor([float(h.shape[1]) for h in features], device=q.device)
    theta = (dims * q).sum() / dims.sum()
    keep = (torch.rand(n, len(features), generator=generator, device=q.device) >= q).float()  # Bernoulli(1 - q)
    keep = torch.where(execute, keep, torch.ones_like(keep))
    scale = torch.where(execute, 1 / (1 - theta), torch.ones_like(theta))
    return [h * (keep[:, k : k + 1] * scale).to(h.dtype) for k, h in enumerate(features)]


class OPM(Method):
    """On-the-fly prediction modulation (Wei et al., TPAMI 2024; the extension of OGM-GE).

    Within the window, with probability ``p_exe`` per iteration, each paired sample's features of
    modality m are dropped (zeroed) with probability q(m) (:func:`opm_drop_probabilities`: only the
    leading modality's are), every feature is rescaled by 1 / (1 - theta)
    (:func:`drop_features`), and the fusion CE is taken on the fusion head's output for these
    features. The scores s(m) are OGM-GE's: the sum over the paired samples of softmax(out_m)[y],
    out_m the fusion head restricted to m's features (+ bias/M), without gradient. Outside the
    window, and at evaluation, the fusion head sees every feature. The unimodal heads learn on
    detached features (CMD monitors), as with ``joint``.

    Args:
        q_base: the base drop probability; 0.5 as in the authors' ``train_opm.sh``.
        lam: how much the discrepancy raises it; 0.5 as in that script.
        p_exe: the probability that the drop is executed at an iteration; 0.7 as in that script.
        start: the window's start, as a fraction of the budget; 0.06: the authors' code drops
            nothing in its warm-up epochs 0-5 of 100.
        end: the window's end (exclusive); 1.0: the drop runs to the end in the authors' code.
    """

    name = "opm"
    fusions = ("concat", "sum")

    def __init__(self, q_base: float = 0.5, lam: float = 0.5, p_exe: float = 0.7, start: float = 0.06,
                 end: float = 1.0) -> None:
        if not 0.0 <= q_base <= 1.0:
            raise ConfigError(f"opm q_base must be in [0, 1], got {q_base}")
        if not lam >= 0:
            raise ConfigError(f"opm lam must be >= 0, got {lam}")
        if not 0.0 <= p_exe <= 1.0:
            raise ConfigError(f"opm p_exe must be in [0, 1], got {p_exe}")
        if not 0.0 <= start <= end <= 1.0:
            raise ConfigError(f"opm needs 0 <= start <= end <= 1 (fractions of the budget), got {start}, {end}")
        self.q_base, self.lam, self.p_exe = float(q_base), float(lam), float(p_exe)
        self.start, self.end = float(start), float(end)

    def setup(self, model: nn.Module, modalities: tuple[str, ...], device: torch.device, seed: int) -> None:
        """Seed the drop (its own generator on the learner's device: no global RNG is touched)."""
        super().setup(model, modalities, device, seed)
        self.generator = torch.Generator(device=device).manual_seed(seed + 6143)

    def dropped_fusion(self, model: nn.Module, features: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """The fused logits of the paired features after OPM's drop."""
        q = opm_drop_probabilities(modality_scores(model, features, target), self.q_base, self.lam)
        execute = torch.rand((), generator=self.generator, device=q.device) < self.p_exe
        return model.fuse(drop_features(features, q, execute, self.generator))

    def step(self, ctx: StepContext, batch: IterationBatch) -> MethodOutput:
        """Backward of the fusion CE on the (possibly) dropped features, and of the monitor heads' CEs."""
        def dropped(model: nn.Module, features: list[torch.Tensor]) -> torch.Tensor:
            """The fused logits after the drop, for the paired samples' labels."""
            return self.dropped_fusion(model, features, batch.paired_target)

        modulated = in_window(batch.progress, self.start, self.end)
        out = forward(ctx, batch, self.modalities, detach_heads=True, fuse=dropped if modulated else None)
        loss = total_loss(out, batch, self.modalities, weighted=False)
        loss.backward()
        return MethodOutput(loss, out.fusion_loss, out.unimodal_losses, out.status)

    def state_dict(self) -> dict[str, Any]:
        """The drop generator's state (for an exact resume)."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the drop generator."""
        if "generator" in state:
            self.generator.set_state(state["generator"].cpu())
