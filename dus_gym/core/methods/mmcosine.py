"""``mmcosine``: Xu et al., "MMCosine: Multi-Modal Cosine Loss Towards Balanced Audio-Visual Learning", ICASSP 2023.

(The paper's full title ends "... Towards Balanced Audio-Visual Fine-Grained Learning".)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dus_gym.core.config import ConfigError
from dus_gym.core.methods.base import (
    IterationBatch,
    Method,
    MethodOutput,
    StepContext,
    forward,
    fusion_parts,
    total_loss,
)


def cosine_logits(model: nn.Module, features: list[torch.Tensor], scaling: float) -> torch.Tensor:
    """MMCosine's fused logits: s * sum_m cos(h_m, w_m,c) for every class c, no bias.

    w_m,c is the row of class c in the part of the fusion head that reads modality m (the columns
    of the concatenation head that read m; with sum fusion, m's own linear map); features and class
    vectors are normalised modality by modality, so no modality can dominate by its norm.
    """
    weights = [w for w, _ in fusion_parts(model, [h.shape[1] for h in features])]
    return scaling * sum(F.normalize(h, dim=1) @ F.normalize(w.to(h.dtype), dim=1).T
                         for h, w in zip(features, weights, strict=True))


class MMCosine(Method):
    """Multi-modal cosine loss (Xu et al., ICASSP 2023).

    The fusion CE is taken on :func:`cosine_logits` (scaled sums of per-modality cosine
    similarities) instead of the linear fusion head's logits, in training and at evaluation. The
    unimodal heads learn on detached features (CMD monitors), as with ``joint``.

    Args:
        scaling: the scale s of the cosine logits; 10 as in the authors' code and README.
    """

    name = "mmcosine"
    fusions = ("concat", "sum")

    def __init__(self, scaling: float = 10.0) -> None:
        if not scaling > 0:
            raise ConfigError(f"mmcosine scaling must be > 0, got {scaling}")
        self.scaling = float(scaling)

    def fusion_logits(self, model: nn.Module, features: list[torch.Tensor]) -> torch.Tensor:
        """The cosine logits (training and evaluation)."""
        return cosine_logits(model, features, self.scaling)

    def step(self, ctx: StepContext, batch: IterationBatch) -> MethodOutput:
        """Backward of the cosine fusion CE and of the monitor heads' CEs."""
        out = forward(ctx, batch, self.modalities, detach_heads=True, fuse=self.fusion_logits)
        loss = total_loss(out, batch, self.modalities, weighted=False)
        loss.backward()
        return MethodOutput(loss, out.fusion_loss, out.unimodal_losses, out.status)
