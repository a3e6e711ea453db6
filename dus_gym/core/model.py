"""The multimodal network (encoders, unimodal heads, a fusion head), device resolution and count quantisation.

Fusion heads (``learner.fusion``, the ablation axis of OGM-GE and BalanceBenchmark): ``concat``
(the default, a linear map on the concatenated features), ``sum`` (one linear map per modality,
summed), ``gated`` and ``film`` (the first modality gates or conditions the others).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from dus_gym.core.config import FUSIONS
from dus_gym.core.task import Task


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


class SumFusion(nn.Module):
    """Sum fusion: logits = sum_m W_m h_m + b_m (one linear map per modality, OGM-GE's ``sum``).

    Args:
        dims: feature size of every modality, in modality order.
        n_classes: number of classes.
    """

    def __init__(self, dims: Sequence[int], n_classes: int) -> None:
        super().__init__()
        self.parts = nn.ModuleList([nn.Linear(d, n_classes) for d in dims])

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Fused logits of the per-modality features (each (n, d_m))."""
        return torch.stack([part(h) for part, h in zip(self.parts, features, strict=True)]).sum(0)


class GatedFusion(nn.Module):
    """Gated fusion (Kiela et al. 2018, OGM-GE's ``gated``): logits = W_o (sigmoid(W_x h_1) * W_y h_rest) + b_o.

    The first modality gates; the others (concatenated when M > 2) are gated.

    Args:
        dims: feature size of every modality, in modality order.
        n_classes: number of classes.
        width: size of the gated vector (default: the largest feature size).
    """

    def __init__(self, dims: Sequence[int], n_classes: int, width: int | None = None) -> None:
        super().__init__()
        width = width or max(dims)
        self.gate = nn.Linear(dims[0], width)
        self.value = nn.Linear(sum(dims[1:]), width)
        self.out = nn.Linear(width, n_classes)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Fused logits of the per-modality features (each (n, d_m))."""
        rest = torch.cat(list(features[1:]), dim=1)
        return self.out(torch.sigmoid(self.gate(features[0])) * self.value(rest))


class FiLMFusion(nn.Module):
    """FiLM fusion (Perez et al. 2018, OGM-GE's ``film``): logits = W_o (gamma(h_1) * h_rest + beta(h_1)) + b_o.

    The first modality conditions; the others (concatenated when M > 2) are modulated:
    (gamma, beta) = split(W_f h_1 + b_f).

    Args:
        dims: feature size of every modality, in modality order.
        n_classes: number of classes.
    """

    def __init__(self, dims: Sequence[int], n_classes: int) -> None:
        super().__init__()
        self.width = sum(dims[1:])
        self.film = nn.Linear(dims[0], 2 * self.width)
        self.out = nn.Linear(self.width, n_classes)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Fused logits of the per-modality features (each (n, d_m))."""
        gamma, beta = torch.split(self.film(features[0]), self.width, dim=1)
        return self.out(gamma * torch.cat(list(features[1:]), dim=1) + beta)


def fusion_head(kind: str, dims: Sequence[int], n_classes: int) -> nn.Module:
    """The fusion head ``kind`` over features of sizes ``dims`` (concat: one linear map on the concatenation)."""
    if kind == "concat":
        return nn.Linear(sum(dims), n_classes)
    if kind == "sum":
        return SumFusion(dims, n_classes)
    if kind == "gated":
        return GatedFusion(dims, n_classes)
    if kind == "film":
        return FiLMFusion(dims, n_classes)
    raise ValueError(f"unknown fusion '{kind}'; choose from {list(FUSIONS)}")


class MultimodalNet(nn.Module):
    """Encoders, unimodal heads and a fusion head for a task.

    Args:
        task: the task (its encoder factories, modalities and number of classes).
        shared_head: one classification head for every modality (MLA); the encoders must then
            have one feature size.
        fusion: the fusion head, one of :data:`~dus_gym.core.config.FUSIONS` (concat: a linear head on the
            concatenated features).
    """

    def __init__(self, task: Task, shared_head: bool = False, fusion: str = "concat") -> None:
        super().__init__()
        self.modalities = task.modalities
        self.fusion_kind = fusion
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
        self.fusion = fusion_head(fusion, dims, task.n_classes)

    def fuse(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Fused logits of paired per-modality features (in modality order, each (n, d_m))."""
        if self.fusion_kind == "concat":
            return self.fusion(torch.cat(list(features), dim=1))
        return self.fusion(features)

    def forward(self, features: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Unimodal logits per modality and fused logits for paired inputs."""
        encoded = {m: self.encoders[m](features[m]) for m in self.modalities}
        logits = {m: self.heads[m](encoded[m]) for m in self.modalities}
        return logits, self.fuse([encoded[m] for m in self.modalities])


def _encoder(task: Task, modality: str) -> nn.Module:
    """A fresh encoder of ``modality``: an ``nn.Module`` with a positive integer ``out_dim`` (else one clear error)."""
    encoder = task.encoders[modality]()
    out_dim = getattr(encoder, "out_dim", None)
    if not isinstance(encoder, nn.Module) or isinstance(out_dim, bool) or not isinstance(out_dim, int) or out_dim < 1:
        raise ValueError(f"task '{task.name}': the encoder of '{modality}' must be an nn.Module with a positive "
                         f"integer attribute out_dim (the size of its feature vector), got "
                         f"{type(encoder).__name__} with out_dim={out_dim!r}")
    return encoder
