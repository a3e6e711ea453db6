"""The multimodal network (encoders, unimodal heads, fusion head), device resolution and count quantisation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from dus_gym.tasks.base import Task


def resolve_device(name: str) -> torch.device:
    """Turn "cpu", "cuda", "cuda:N" or "auto" into a device, with a clear error if CUDA is absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device '{name}' asked for but CUDA is not available; use device 'cpu' or 'auto'")
    return device


def quantize_counts(counts: Sequence[int] | np.ndarray, sizes: Sequence[int] | None) -> np.ndarray:
    """Round each positive count up to the next of ``sizes`` (the largest if above all); None: unchanged.

    A small set of batch shapes keeps cuDNN autotuning and torch.compile from re-running as the
    counts change. Works on any array shape (one learner's counts, or N learners' at once).
    """
    counts = np.asarray(counts, dtype=np.int64)
    if not sizes:
        return counts
    table = np.asarray(sorted(sizes), dtype=np.int64)
    position = np.minimum(np.searchsorted(table, counts), len(table) - 1)
    return np.where(counts > 0, table[position], 0)


class MultimodalNet(nn.Module):
    """Encoders, unimodal heads and a concatenation fusion head for a task.

    Args:
        task: the task (its encoder factories, modalities and number of classes).
        shared_head: one classification head for every modality (MLA); the encoders must then
            have one feature size.
    """

    def __init__(self, task: Task, shared_head: bool = False) -> None:
        super().__init__()
        self.modalities = task.modalities
        self.encoders = nn.ModuleDict({m: _encoder(task, m) for m in task.modalities})
        dims = [self.encoders[m].out_dim for m in task.modalities]
        if shared_head:
            if len(set(dims)) != 1:
                raise ValueError(f"a shared head needs encoders of one feature size, task '{task.name}' has "
                                 f"{dict(zip(task.modalities, dims, strict=True))}; give them the same out_dim")
            head = nn.Linear(dims[0], task.n_classes)
            self.heads = nn.ModuleDict({m: head for m in task.modalities})
        else:
            self.heads = nn.ModuleDict(
                {m: nn.Linear(d, task.n_classes) for m, d in zip(task.modalities, dims, strict=True)}
            )
        self.fusion = nn.Linear(sum(dims), task.n_classes)

    def forward(self, features: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Unimodal logits per modality and fused logits for paired inputs."""
        encoded = {m: self.encoders[m](features[m]) for m in self.modalities}
        logits = {m: self.heads[m](encoded[m]) for m in self.modalities}
        return logits, self.fusion(torch.cat([encoded[m] for m in self.modalities], dim=1))


def _encoder(task: Task, modality: str) -> nn.Module:
    """A fresh encoder of ``modality``: an ``nn.Module`` with a positive integer ``out_dim`` (else one clear error)."""
    encoder = task.encoders[modality]()
    out_dim = getattr(encoder, "out_dim", None)
    if not isinstance(encoder, nn.Module) or isinstance(out_dim, bool) or not isinstance(out_dim, int) or out_dim < 1:
        raise ValueError(f"task '{task.name}': the encoder of '{modality}' must be an nn.Module with a positive "
                         f"integer attribute out_dim (the size of its feature vector), got "
                         f"{type(encoder).__name__} with out_dim={out_dim!r}")
    return encoder
