"""The formulas of one iteration, shared by the single and the batched learner.

Both learners call these on tensors whose last axes are (rows,) or (rows, classes): one learner's
batch, or N learners' padded batches with a mask of each learner's real rows. So the loss and
the learning status that the CMD monitor follows have one definition:

- CE of a head on its samples, and the learning status s(m): the mean, over the samples a
  modality drew, of -log p(y|x) and of p(y|x) (the softmax probability of the true class);
- the ``unimodal-aux`` loss: CE(fusion) on the paired samples + sum_m w(m) CE(head_m) on each
  modality's own samples, with w(m) = n(m)/B ("scaled") or 1 ("mean").

Pure tensor code: no model, no optimiser.
"""

from __future__ import annotations

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the last axis, over the entries of ``mask`` only (0 where a row has none); None: all entries."""
    if mask is None:
        return values.mean(-1)
    return (values * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def head_terms(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """CE of a head on its samples and the learning status s(m) (detached), both over the masked rows.

    Args:
        logits: (..., rows, classes).
        labels: (..., rows) true classes.
        mask: (..., rows) which rows are real samples (None: all).
    """
    if labels.shape[-1] == 0:
        raise ValueError("learning status needs at least one sample")
    logits = logits.float()
    target = labels.unsqueeze(-1)
    log_p = logits.log_softmax(-1).gather(-1, target).squeeze(-1)  # log p(true class) per row
    ce = masked_mean(-log_p, mask)
    with torch.no_grad():
        status = masked_mean(log_p.detach().exp(), mask)  # p(true class): one softmax serves both
    return ce, status


def unimodal_aux_loss(unimodal_ce: torch.Tensor, weights: torch.Tensor, present: torch.Tensor,
                      fusion_ce: torch.Tensor, paired: torch.Tensor) -> torch.Tensor:
    """CE(fusion) where some sample is paired + sum over the modalities that drew samples of w(m) CE(head_m).

    Args:
        unimodal_ce: (..., M) each head's CE on its own samples (any finite value where absent).
        weights: (..., M) w(m).
        present: (..., M) whether modality m drew samples.
        fusion_ce: (...) CE of the fusion head on the paired samples.
        paired: (...) whether some sample is paired (min count > 0).
    """
    terms = torch.where(present, weights * unimodal_ce, torch.zeros_like(unimodal_ce)).sum(-1)
    return terms + torch.where(paired, fusion_ce, torch.zeros_like(fusion_ce))
