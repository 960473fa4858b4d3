"""Small classic CNNs that train in seconds on CPU, for tests and quick experiments."""

from __future__ import annotations

from torch import nn


def _conv(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class LeNet(nn.Module):
    """LeNet-5 layout with BatchNorm (prunable by channel) and adaptive pooling (any input size)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            _conv(3, 16, 5), nn.MaxPool2d(2), _conv(16, 32, 5), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(4)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 16, 120),
            nn.ReLU(inplace=True),
            nn.Linear(120, 84),
            nn.ReLU(inplace=True),
            nn.Linear(84, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class TinyVGG(nn.Module):
    """Three VGG-style blocks, 32-64-128 channels: a little more capacity than LeNet, still seconds per epoch."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            _conv(3, 32, 3),
            nn.MaxPool2d(2),
            _conv(32, 64, 3),
            nn.MaxPool2d(2),
            _conv(64, 128, 3),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(128, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


SMALL_MODELS = {"lenet": LeNet, "tinyvgg": TinyVGG}
