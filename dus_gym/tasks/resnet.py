"""ResNet-18 encoders for spectrograms and video frames (He et al., CVPR 2016; as in OGM-GE).

torchvision is not a dependency (its PyPI build does not import beside every torch build), so the
architecture is defined here: a 7x7/2 stem, 3x3/2 max-pool, four stages of two basic blocks with
64, 128, 256 and 512 channels, then global average pooling to a 512-d feature.
"""

from __future__ import annotations

import torch
from torch import nn


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
