"""``umt``: Uni-Modal Teacher (Du et al., ICML 2023).

Du et al., "On Uni-Modal Feature Learning in Supervised Multi-Modal Learning", ICML 2023.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dus_gym.core.config import ConfigError
from dus_gym.core.methods.base import IterationBatch, Method, MethodOutput, StepContext, forward, total_loss


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """UMT's feature distillation: the mean squared error between the student's and the teacher's features."""
    return F.mse_loss(student.float(), teacher.detach().float())


class UMT(Method):
    """Uni-Modal Teacher (Du et al., ICML 2023), with its teachers trained in the same run.

    Phase 1 (the first ``teacher_fraction`` of the budget): every encoder and its unimodal head
    learn as a unimodal model, on w(m) CE(head_m) of m's own n(m) samples (no fusion loss). At the
    switch each encoder is frozen as modality m's teacher, and the encoders restart from their
    initial weights (their optimiser state cleared): the student. Phase 2: fusion CE on the paired
    samples + ``scaling`` sum_m w(m) MSE(encoder_m(x), teacher_m(x)) on m's own samples; the
    unimodal heads go on learning on detached features (CMD monitors), as with ``joint``.

    Args:
        scaling: weight of the distillation (BalanceBenchmark's UMT ``scaling``, 10).
        teacher_fraction: share of the budget that trains the teachers (the learner must be given
            its progress).
    """

    name = "umt"

    def __init__(self, scaling: float = 10.0, teacher_fraction: float = 0.5) -> None:
        if not scaling >= 0:
            raise ConfigError(f"umt scaling must be >= 0, got {scaling}")
        if not 0.0 < teacher_fraction < 1.0:
            raise ConfigError(f"umt teacher_fraction must be in (0, 1), got {teacher_fraction}")
        self.scaling, self.teacher_fraction = float(scaling), float(teacher_fraction)

    def setup(self, model: nn.Module, modalities: tuple[str, ...], device: torch.device, seed: int) -> None:
        """Keep the encoders' initial weights (the student restarts from them); no teachers yet."""
        super().setup(model, modalities, device, seed)
        self.model = model
        self.initial = {m: copy.deepcopy(model.encoders[m].state_dict()) for m in modalities}
        self.teachers: dict[str, nn.Module] | None = None

    def make_teachers(self, ctx: StepContext) -> None:
        """Freeze the encoders as teachers; restart the encoders from their initial weights."""
        self.teachers = {}
        for m in self.modalities:
            encoder = ctx.model.encoders[m]
            teacher = copy.deepcopy(encoder).eval()
            teacher.requires_grad_(False)
            self.teachers[m] = teacher
            encoder.load_state_dict(self.initial[m])
            for p in encoder.parameters():
                ctx.optimizer.state.pop(p, None)

    def step(self, ctx: StepContext, batch: IterationBatch) -> MethodOutput:
        """Unimodal training of the teachers, or the fusion CE plus the distillation of the student's features."""
        if batch.progress is None:
            raise ValueError("umt needs the run's progress (Learner.step(..., progress=...)) to end its teacher phase")
        if self.teachers is None and batch.progress >= self.teacher_fraction:
            self.make_teachers(ctx)
        if self.teachers is None:
            out = forward(ctx, batch, self.modalities, detach_heads=False)
            zero = torch.zeros((), device=out.fusion_loss.device)
            loss = sum((batch.weights[m] * ce for m, ce in out.unimodal_losses.items()), zero)
            loss.backward()
            return MethodOutput(loss, out.fusion_loss.detach(), out.unimodal_losses, out.status)
        out = forward(ctx, batch, self.modalities, detach_heads=True)
        loss = total_loss(out, batch, self.modalities, weighted=False)
        with torch.no_grad(), ctx.autocast():
            targets = {m: self.teachers[m](x) for m, x in batch.inputs.items()}
        for m, h in out.encoded.items():
            loss = loss + self.scaling * batch.weights[m] * distillation_loss(h, targets[m])
        loss.backward()
        return MethodOutput(loss, out.fusion_loss, out.unimodal_losses, out.status)

    def state_dict(self) -> dict[str, Any]:
        """The encoders' initial weights and, after the switch, the teachers' weights."""
        state: dict[str, Any] = {"initial": {m: {k: v.cpu() for k, v in s.items()} for m, s in self.initial.items()}}
        if self.teachers is not None:
            state["teachers"] = {m: {k: v.cpu() for k, v in t.state_dict().items()} for m, t in self.teachers.items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (teachers rebuilt as copies of the encoders with the saved weights)."""
        if "initial" not in state:
            return
        self.initial = state["initial"]
        self.teachers = None
        if "teachers" in state:
            self.teachers = {}
            for m, weights in state["teachers"].items():
                teacher = copy.deepcopy(self.model.encoders[m]).eval()
                teacher.load_state_dict(weights)
                teacher.requires_grad_(False)
                self.teachers[m] = teacher
