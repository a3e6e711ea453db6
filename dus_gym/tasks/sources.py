"""Lazy on-disk modalities: a source loads the samples a batch asks for, nothing before.

A :class:`ClipSource` is what a task puts in a :class:`~dus_gym.core.task.MultimodalSplit` instead
of a tensor when the data does not fit in memory (video frames, images): indexing it with
integers, an index tensor or a slice loads those samples and stacks them; ``subset`` narrows it
without loading anything. The learner's DataLoader workers call it ahead of time
(:mod:`dus_gym.core.loader`).
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from dus_gym.core.extras import require

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def as_index(index: torch.Tensor | np.ndarray | slice | Sequence[int] | int, n: int) -> np.ndarray:
    """Any index (tensor, array, slice, list, int) over ``n`` samples as an int64 array."""
    if isinstance(index, slice):
        return np.arange(n)[index]
    if isinstance(index, torch.Tensor):
        index = index.cpu().numpy()
    return np.atleast_1d(np.asarray(index, dtype=np.int64))


class ClipSource(ABC):
    """A lazy modality: indexing with integers, an index tensor or a slice loads those samples.

    Args:
        root: the prepared data folder.
        clips: sample names, in sample order.
    """

    def __init__(self, root: Path, clips: Sequence[str]) -> None:
        self.root = Path(root)
        self.clips = list(clips)

    def __len__(self) -> int:
        return len(self.clips)

    def subset(self, index: torch.Tensor | np.ndarray) -> ClipSource:
        """The same source over the samples at ``index`` (nothing is loaded)."""
        clone = copy.copy(self)
        clone.clips = [self.clips[i] for i in as_index(index, len(self))]
        return clone

    def to(self, device: torch.device | str) -> ClipSource:
        """Samples are moved batch by batch, so the source itself stays where it is."""
        return self

    @abstractmethod
    def load(self, clip: str) -> torch.Tensor:
        """One sample's tensor."""

    def __getitem__(self, index: torch.Tensor | np.ndarray | slice | Sequence[int]) -> torch.Tensor:
        return torch.stack([self.load(self.clips[i]) for i in as_index(index, len(self))])


def load_image(path: Path, size: int, mode: str = "RGB", crop: float = 1.0) -> torch.Tensor:
    """An image file as a float tensor in [0, 1]: (C, size, size), C = 3 for "RGB", 1 for "L".

    ``crop`` < 1 first takes the central ``crop`` fraction of each side (a centre crop), then the
    image is resized to ``size`` x ``size`` (bilinear). An unreadable file is an error that names it.
    """
    Image = require("PIL.Image", "av", "the audio-visual and image tasks")  # noqa: N806

    try:
        with Image.open(path) as image:
            image = image.convert(mode)
            if crop < 1.0:
                w, h = image.size
                cw, ch = round(w * crop), round(h * crop)
                left, top = (w - cw) // 2, (h - ch) // 2
                image = image.crop((left, top, left + cw, top + ch))
            if image.size != (size, size):
                image = image.resize((size, size), Image.BILINEAR)
            pixels = np.asarray(image, dtype=np.uint8).copy()
    except (OSError, Image.DecompressionBombError) as err:  # a bomb: over 2 x Image.MAX_IMAGE_PIXELS, not decoded
        raise ValueError(f"image {path} is missing or unreadable ({err}); rerun 'dus-gym prepare'") from err
    array = torch.from_numpy(pixels)
    array = array.unsqueeze(0) if array.dim() == 2 else array.permute(2, 0, 1)
    return array.float() / 255.0


def imagenet_normalize(images: torch.Tensor) -> torch.Tensor:
    """(…, 3, H, W) in [0, 1] -> ImageNet mean/std normalised (what ImageNet-pretrained encoders expect)."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (images - mean) / std


class HostTensor:
    """An in-memory modality that stays on the host: batches are moved to the device, as with the lazy sources.

    In a split whose other modalities load from disk in DataLoader worker processes (forked), a
    tensor moved to CUDA could not be indexed by those workers; wrapped in this, it stays on the
    CPU (``to`` is a no-op) and every modality of a batch takes the same path to the device.

    Args:
        data: the tensor, first dimension = samples.
    """

    def __init__(self, data: torch.Tensor) -> None:
        self.data = data.cpu()

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: torch.Tensor | np.ndarray | slice | Sequence[int]) -> torch.Tensor:
        if isinstance(index, slice):
            return self.data[index]
        return self.data[torch.from_numpy(as_index(index, len(self)))]

    def subset(self, index: torch.Tensor | np.ndarray) -> HostTensor:
        """The samples at ``index``, still on the host."""
        return HostTensor(self[index])

    def to(self, device: torch.device | str) -> HostTensor:
        """Stays on the host (batches are moved one by one)."""
        return self
