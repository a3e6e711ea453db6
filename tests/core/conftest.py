"""A tiny task whose encoders are one tanh layer (the methods' and the fusion heads' hand computations)."""

import pytest
import torch
from torch import nn

from dus_gym.core.task import MultimodalSplit, Task


class TanhEncoder(nn.Module):
    """One tanh layer: small enough to reason about, non-linear enough to matter."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.out_dim = d_out
        self.lin = nn.Linear(d_in, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.lin(x))


def tiny_task() -> Task:
    g = torch.Generator().manual_seed(0)
    n = 90
    labels = torch.arange(n) % 3
    a = torch.randn(n, 4, generator=g) + labels[:, None].float()
    b = torch.randn(n, 3, generator=g) - 0.5 * labels[:, None].float()

    def split(rows):
        return MultimodalSplit({"a": a[rows], "b": b[rows]}, labels[rows])

    return Task("tiny", ("a", "b"), 3, {"train": split(slice(0, 60)), "val": split(slice(60, 75)),
                                        "test": split(slice(75, 90))},
                {"a": lambda: TanhEncoder(4, 5), "b": lambda: TanhEncoder(3, 5)})


@pytest.fixture(scope="module")
def tiny():
    return tiny_task()
