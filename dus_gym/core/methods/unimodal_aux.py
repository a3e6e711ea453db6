"""``unimodal-aux`` (the default, DUS's base): fusion CE + sum_m w(m) CE(head_m) on m's own samples."""

from __future__ import annotations

from dus_gym.core.methods.base import IterationBatch, Method, MethodOutput, StepContext, forward, total_loss


class UnimodalAux(Method):
    """Fusion CE on the paired samples + sum_m w(m) CE of head m on m's own samples (DUS's base).

    The loss is :func:`dus_gym.core.objectives.unimodal_aux_loss`, the formula the batched learner
    computes for N learners at once (hence ``batchable``).
    """

    name = "unimodal-aux"
    batchable = True

    def step(self, ctx: StepContext, batch: IterationBatch) -> MethodOutput:
        """One backward pass of the summed loss."""
        out = forward(ctx, batch, self.modalities, detach_heads=False)
        loss = total_loss(out, batch, self.modalities, weighted=True)
        loss.backward()
        return MethodOutput(loss, out.fusion_loss, out.unimodal_losses, out.status)
