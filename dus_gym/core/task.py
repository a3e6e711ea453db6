"""The task interface: data splits, modality names, encoders and number of classes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class MultimodalSplit:
    """One split of a multimodal data set: paired features per modality and one label per sample.

    Args:
        features: modality name -> tensor whose first dimension indexes samples, or a lazy source
            (``__len__``, ``__getitem__`` with an index tensor or a slice returning a tensor, ``subset``
            and ``to``; see :class:`dus_gym.tasks.sources.ClipSource`).
        labels: int64 tensor of class indices, one per sample.
    """

    features: Mapping[str, torch.Tensor]
    labels: torch.Tensor

    def __post_init__(self) -> None:
        n = len(self.labels)
        for name, x in self.features.items():
            if len(x) != n:
                raise ValueError(f"modality '{name}' has {len(x)} samples but there are {n} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> MultimodalSplit:
        """Return the samples at ``index`` (paired across modalities; lazy sources stay lazy)."""
        return MultimodalSplit(
            {m: x.subset(index) if hasattr(x, "subset") else x[index] for m, x in self.features.items()},
            self.labels[index],
        )

    def to(self, device: torch.device | str) -> MultimodalSplit:
        """Return a copy on ``device``."""
        return MultimodalSplit({m: x.to(device) for m, x in self.features.items()}, self.labels.to(device))


EncoderFactory = Callable[[], nn.Module]
"""Builds a fresh encoder; the module must expose ``out_dim`` (size of its feature vector)."""


@dataclass(frozen=True)
class Task:
    """A multimodal classification task, what the learner trains on.

    A user's own task is a function that returns one of these (see :func:`dus_gym.tasks.register_task`).

    Args:
        name: short name, used in logs and results.
        modalities: modality names, in a fixed order (the order of counts and of the CMD vector).
        n_classes: number of classes.
        splits: "train", "val" and "test" splits.
        encoders: modality name -> factory of a fresh encoder for that modality.
        metadata: free-form facts about the task (source, attribution, generator parameters).
    """

    name: str
    modalities: tuple[str, ...]
    n_classes: int
    splits: Mapping[str, MultimodalSplit]
    encoders: Mapping[str, EncoderFactory]
    metadata: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.modalities) < 2:
            raise ValueError(f"task '{self.name}' needs at least 2 modalities, got {list(self.modalities)}")
        missing = [s for s in SPLITS if s not in self.splits]
        if missing:
            raise ValueError(f"task '{self.name}' lacks the split(s) {missing}")
        for split_name, split in self.splits.items():
            if set(split.features) != set(self.modalities):
                raise ValueError(
                    f"task '{self.name}': split '{split_name}' has modalities {sorted(split.features)}, "
                    f"expected {sorted(self.modalities)}"
                )
            labels = split.labels
            if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= self.n_classes):
                raise ValueError(
                    f"task '{self.name}': split '{split_name}' has labels outside [0, {self.n_classes - 1}]"
                )
            for m, x in split.features.items():
                if isinstance(x, torch.Tensor) and x.is_floating_point() and not bool(torch.isfinite(x).all()):
                    raise ValueError(f"task '{self.name}': split '{split_name}', modality '{m}' has NaN/inf")
        if set(self.encoders) != set(self.modalities):
            raise ValueError(f"task '{self.name}': encoders given for {sorted(self.encoders)}, "
                             f"expected {sorted(self.modalities)}")


class MLPEncoder(nn.Module):
    """A two-layer perceptron encoder for a feature vector.

    Args:
        in_dim: input size.
        hidden_dim: width of both layers; also ``out_dim``.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 128) -> None:
        super().__init__()
        self.out_dim = hidden_dim
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, hidden_dim), nn.ReLU()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (batch, in_dim) to (batch, out_dim)."""
        return self.net(x)


class SmallCNNEncoder(nn.Module):
    """A small convolutional encoder for single-channel images (e.g. mfeat's 16x15 digits).

    Args:
        image_shape: (height, width) of the input; inputs are (batch, height * width) or
            (batch, 1, height, width).
        channels: channels of the two convolution layers.
        out_dim: size of the feature vector.
    """

    def __init__(self, image_shape: tuple[int, int], channels: int = 16, out_dim: int = 128) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.out_dim = out_dim
        self.conv = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d((4, 4)),
        )
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(2 * channels * 16, out_dim), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (batch, H*W) or (batch, 1, H, W) to (batch, out_dim)."""
        if x.dim() == 2:
            x = x.view(len(x), 1, *self.image_shape)
        return self.fc(self.conv(x))
