"""ResNet encoders (He et al., CVPR 2016): ResNet-18 for spectrograms and frames (as in OGM-GE), ResNet-50 for images.

torchvision is not a dependency: its build from the package index does not load beside every torch
build this package allows (beside the CPU build of torch 2.13, ``import torchvision`` fails with
"operator torchvision::nms does not exist"), so the architectures are written here by hand, and
images are decoded with Pillow (:func:`dus_gym.tasks.sources.load_image`) rather than torchvision.io.

ResNet-18: a 7x7/2 stem, 3x3/2 max-pool, four stages of two
basic blocks with 64, 128, 256 and 512 channels, then global average pooling to a 512-d feature.
ResNet-50 (:class:`BottleneckResNet`): the same stem, four stages of 3, 4, 6 and 3 bottleneck blocks,
a 2048-d feature, with torchvision's parameter names so that its ImageNet weights load.
"""

from __future__ import annotations

import torch
from torch import nn

from dus_gym.tasks.weights import load_matching


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or 1x1 projection) shortcut."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual block."""
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18Trunk(nn.Module):
    """ResNet-18 without its classifier: (N, C, H, W) -> (N, 512, H/32, W/32)."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        stages, width = [], 64
        for channels, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages += [BasicBlock(width, channels, stride), BasicBlock(channels, channels)]
            width = channels
        self.stages = nn.Sequential(*stages)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Feature maps of the last stage."""
        return self.stages(self.stem(x))


class AudioResNetEncoder(nn.Module):
    """ResNet-18 on a one-channel spectrogram (N, F, T) or (N, 1, F, T) -> (N, 512)."""

    out_dim = 512

    def __init__(self) -> None:
        super().__init__()
        self.trunk = ResNet18Trunk(in_channels=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Globally pooled features."""
        if x.dim() == 3:
            x = x.unsqueeze(1)
        return self.trunk(x).mean(dim=(2, 3))


class VisualResNetEncoder(nn.Module):
    """ResNet-18 on T frames (N, T, 3, H, W), pooled over time and space -> (N, 512)."""

    out_dim = 512

    def __init__(self) -> None:
        super().__init__()
        self.trunk = ResNet18Trunk(in_channels=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Frames share the trunk; features are averaged over frames and positions."""
        n, t = x.shape[:2]
        maps = self.trunk(x.flatten(0, 1))
        return maps.view(n, t, *maps.shape[1:]).mean(dim=(1, 3, 4))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride, as torchvision's ResNet v1.5), 1x1 expand (x4), with a shortcut."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        out = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual bottleneck block."""
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class BottleneckResNet(nn.Module):
    """A bottleneck ResNet trunk (ResNet-50 by default): (N, 3, H, W) -> (N, 8 * width * 4) pooled features.

    Written here, like :class:`ResNet18Trunk`, because torchvision does not import beside every torch
    build; the parameter names are torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
    ``layer1.0.downsample.0``), so torchvision's ImageNet weights (``resnet50-0676ba61.pth``) load into
    it unchanged (their ``fc`` classifier is dropped). ``blocks`` and ``width`` give smaller variants
    (tests use ``blocks=(1, 1, 1, 1), width=8``).

    Args:
        blocks: bottleneck blocks per stage (ResNet-50: 3, 4, 6, 3).
        width: channels of the first stage's 3x3 convolutions (64); stage k has width * 2^k.
        in_channels: input channels.
    """

    def __init__(self, blocks: tuple[int, ...] = (3, 4, 6, 3), width: int = 64, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        channels = width
        for stage, n in enumerate(blocks):
            layers = [Bottleneck(channels, width * 2**stage, 1 if stage == 0 else 2)]
            channels = width * 2**stage * Bottleneck.expansion
            layers += [Bottleneck(channels, width * 2**stage) for _ in range(n - 1)]
            self.add_module(f"layer{stage + 1}", nn.Sequential(*layers))
        self.n_stages = len(blocks)
        self.out_dim = channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled features of the last stage."""
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        for stage in range(self.n_stages):
            x = getattr(self, f"layer{stage + 1}")(x)
        return x.mean(dim=(2, 3))


class ImageResNetEncoder(nn.Module):
    """ResNet-50 (or a smaller bottleneck ResNet) on one image (N, 3, H, W) -> (N, out_dim).

    Args:
        blocks: blocks per stage (see :class:`BottleneckResNet`).
        width: first-stage width.
        weights: a state dict in torchvision's layout to start from (None: random initialisation).
    """

    def __init__(self, blocks: tuple[int, ...] = (3, 4, 6, 3), width: int = 64,
                 weights: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.trunk = BottleneckResNet(blocks, width)
        self.out_dim = self.trunk.out_dim
        if weights is not None:
            load_matching(self.trunk, {k: v for k, v in weights.items() if not k.startswith("fc.")}, "ResNet")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled image features."""
        return self.trunk(x)

