"""A network of your own, as in PyTorch's pruning tutorial: LeNet with 3x3 convolutions, ReLU and the max pooling it
needs after each convolution, so a 32 x 32 image reaches fc1 as 16 x 6 x 6 (use `imgsz: 32`)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class Net(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, 3)
        self.conv2 = nn.Conv2d(6, 16, 3)
        self.fc1 = nn.Linear(16 * 6 * 6, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # 32 -> 30 -> 15
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # 15 -> 13 -> 6
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)
