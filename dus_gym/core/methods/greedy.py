"""``greedy``: re-balancing steps against the greedy learning of multimodal networks (Wu et al., ICML 2022).

Wu, Jastrzebski, Cho and Geras, "Characterizing and Overcoming the Greedy Nature of Learning in Multi-modal
Deep Neural Networks", ICML 2022.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from dus_gym.core.config import ConfigError
from dus_gym.core.methods.base import IterationBatch, Method, MethodOutput, StepContext, forward, total_loss

GATES = "greedy_gates"
"""The name of the gates' module on the model (its parameters join the optimiser and the checkpoint)."""


class ModalityGates(nn.Module):
    """A multimodal transfer module (MMTM) on the encoders' features: one gate vector per modality.

    squeeze = [h_1, ..., h_M], z = relu(W_s squeeze + b_s) with width int(2 sum_m d_m / ratio), and
    gate_m = sigmoid(W_m z + b_m) of size d_m; the fusion head reads h_m * gate_m. Through its gate a
    modality's features depend on the others': this is the cross-modal ("bypass") path of the paper.
    """

    def __init__(self, dims: list[int], modalities: tuple[str, ...], ratio: int = 4) -> None:
        super().__init__()
        width = int(2 * sum(dims) / ratio)
        self.squeeze = nn.Linear(sum(dims), width)
        self.excite = nn.ModuleDict({m: nn.Linear(width, d) for m, d in zip(modalities, dims, strict=True)})

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """The gates (n, d_m) of paired features, in modality order."""
        z = torch.relu(self.squeeze(torch.cat(features, 1)))
        return [torch.sigmoid(excite(z)) for excite in self.excite.values()]


def relative_speed(params: Iterable[nn.Parameter]) -> float:
    """One iteration's learning speed of a parameter group: sum |grad|^2 / sum |weight|^2 (no gradient: 0)."""
    params = list(params)
    # one host transfer for the group (not two per parameter): this runs at every learner iteration
    weight_sq = torch.stack([p.detach().float().square().sum() for p in params]).double().sum()
    grads = [p.grad.float().square().sum() for p in params if p.grad is not None]
    grad_sq = torch.stack(grads).double().sum() if grads else torch.zeros_like(weight_sq)
    grad_sq, weight_sq = torch.stack([grad_sq, weight_sq]).tolist()
    return grad_sq / weight_sq if weight_sq > 0 else 0.0


def caring_modality(bdr: list[float], epsilon: float) -> int | None:
    """The modality to re-balance for, from each modality's BDR = log10(bypass speed / main speed).

    Two modalities (the authors' rule): d = BDR_0 - BDR_1; |d| > epsilon cares for modality 0 when
    d > 0, for modality 1 when d < 0; else none. Ours for M > 2: the modality with the highest BDR when
    the spread max - min exceeds epsilon (the same rule for M = 2).
    """
    if max(bdr) - min(bdr) > epsilon:
        return max(range(len(bdr)), key=lambda k: bdr[k])
    return None


class Greedy(Method):
    """Balanced multimodal learning by re-balancing steps (Wu et al., ICML 2022).

    The fusion head reads the encoders' features through :class:`ModalityGates` (one MMTM after the
    encoders). After each backward pass of the fusion CE, outside a re-balancing window, every
    modality's conditional learning speed is accumulated: the main speed sum_t |g|^2/|w|^2 over its
    encoder, the bypass speed over the gates' squeeze layer and its own excitation layer; BDR(m) =
    log10(bypass / main). From the ``start_epoch``-th epoch of the data walk on, when the BDRs differ
    by more than ``epsilon`` (:func:`caring_modality`), the next ``window`` iterations are
    re-balancing steps: the cared-for modality's gate is replaced by its running average (a constant
    over the batch, no gradient), so its features no longer depend on the other modalities and its
    encoder must carry the prediction itself. The unimodal heads learn on detached features (CMD
    monitors), as with ``joint``.

    Args:
        epsilon: the BDR gap that starts re-balancing; 0.01 as in the authors' guided-training config.
        window: re-balancing steps per window (the authors' ``curation_windowsize``, 5).
        start_epoch: epochs of the data walk before re-balancing may start (the authors' 2).
        ratio: the gates' squeeze ratio (the authors' MMTM ratio, 4).
    """

    name = "greedy"

    def __init__(self, epsilon: float = 0.01, window: int = 5, start_epoch: int = 2, ratio: int = 4) -> None:
        if not epsilon >= 0:
            raise ConfigError(f"greedy epsilon must be >= 0, got {epsilon}")
        if window < 1:
            raise ConfigError(f"greedy window must be >= 1, got {window}")
        if start_epoch < 0:
            raise ConfigError(f"greedy start_epoch must be >= 0, got {start_epoch}")
        if ratio < 1:
            raise ConfigError(f"greedy ratio must be >= 1, got {ratio}")
        self.epsilon, self.window = float(epsilon), int(window)
        self.start_epoch, self.ratio = int(start_epoch), int(ratio)

    def setup(self, model: nn.Module, modalities: tuple[str, ...], device: torch.device, seed: int) -> None:
        """Add the gates to the model (before the learner builds its optimiser); speeds start at 0."""
        super().setup(model, modalities, device, seed)
        dims = [int(model.encoders[m].out_dim) for m in modalities]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 7919)
            model.add_module(GATES, ModalityGates(dims, modalities, self.ratio).to(device))
        self.device = device
        M = len(modalities)
        self.main_speed, self.bypass_speed = [0.0] * M, [0.0] * M
        self.running_gate = [torch.zeros(d, device=device) for d in dims]
        self.gate_updates = 0
        self.caring: int | None = None
        self.curation_step = 0
        self.bdr: list[float] | None = None

    def gated(self, model: nn.Module, features: list[torch.Tensor], training: bool) -> list[torch.Tensor]:
        """h_m * gate_m; in training the running gates are updated and a cared-for modality gets its running gate."""
        gates = getattr(model, GATES)(features)
        if training:
            t = self.gate_updates
            self.running_gate = [((g.detach().float().mean(0) + r * t) / (t + 1)) for g, r in
                                 zip(gates, self.running_gate, strict=True)]
            self.gate_updates += 1
            if self.caring is not None:
                k = self.caring
                gates[k] = self.running_gate[k].to(gates[k].dtype).expand_as(gates[k])
        return [h * g for h, g in zip(features, gates, strict=True)]

    def fusion_logits(self, model: nn.Module, features: list[torch.Tensor]) -> torch.Tensor:
        """The fusion head on the gated features (no re-balancing at evaluation)."""
        return model.fuse(self.gated(model, features, training=False))

    def step(self, ctx: StepContext, batch: IterationBatch) -> MethodOutput:
        """Fusion CE through the gates (and monitors); then the speeds and the re-balancing decision."""
        out = forward(ctx, batch, self.modalities, detach_heads=True,
                      fuse=lambda model, paired: model.fuse(self.gated(model, paired, training=True)))
        loss = total_loss(out, batch, self.modalities, weighted=False)
        loss.backward()
        if batch.n_paired > 0:
            self.update_schedule(ctx.model, batch.epoch >= self.start_epoch)
        return MethodOutput(loss, out.fusion_loss, out.unimodal_losses, out.status)

    def update_schedule(self, model: nn.Module, unlocked: bool) -> None:
        """The authors' callback after the backward pass: accumulate the speeds, or count the window down."""
        if self.caring is not None:
            self.curation_step += 1
            if self.curation_step >= self.window:
                self.caring = None
            return
        gates = getattr(model, GATES)
        for k, m in enumerate(self.modalities):
            self.main_speed[k] += relative_speed(model.encoders[m].parameters())
            self.bypass_speed[k] += relative_speed([*gates.squeeze.parameters(), *gates.excite[m].parameters()])
        if min(self.main_speed) <= 0 or min(self.bypass_speed) <= 0:
            return
        self.bdr = [math.log10(b / a) for a, b in zip(self.main_speed, self.bypass_speed, strict=True)]
        if unlocked:
            self.caring = caring_modality(self.bdr, self.epsilon)
            self.curation_step = 0

    def state_dict(self) -> dict[str, Any]:
        """Speeds, running gates and the re-balancing window (the gates themselves are in the model)."""
        return {"main_speed": list(self.main_speed), "bypass_speed": list(self.bypass_speed),
                "running_gate": [g.cpu() for g in self.running_gate], "gate_updates": self.gate_updates,
                "caring": self.caring, "curation_step": self.curation_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        if "main_speed" in state:
            self.main_speed, self.bypass_speed = list(state["main_speed"]), list(state["bypass_speed"])
            self.running_gate = [g.to(self.device) for g in state["running_gate"]]
            self.gate_updates = int(state["gate_updates"])
            self.caring = state["caring"]
            self.curation_step = int(state["curation_step"])
