"""``joint``: the fusion CE only; the unimodal heads learn on detached features (monitors for the CMD)."""

from __future__ import annotations

from dus_gym.core.methods.base import IterationBatch, Method, MethodOutput, StepContext, forward, total_loss


class Joint(Method):
    """Fusion CE on the paired samples; each unimodal head's CE on detached features (heads only)."""

    name = "joint"

    def step(self, ctx: StepContext, batch: IterationBatch) -> MethodOutput:
        """Backward of the fusion CE (encoders, fusion head) and of the monitor heads' CEs (heads only)."""
        out = forward(ctx, batch, self.modalities, detach_heads=True)
        loss = total_loss(out, batch, self.modalities, weighted=False)
        loss.backward()
        return MethodOutput(loss, out.fusion_loss, out.unimodal_losses, out.status)
