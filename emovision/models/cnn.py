"""cnn_small: a compact VGG-style CNN for 48x48 grayscale faces.

Four stages at 48, 24, 12 and 6 pixels (two 3x3 convs each, BatchNorm, ELU by default),
max-pooling between them, a light squeeze-and-excitation block before the head, global
average pooling and a dropout + linear head. Narrow early stages keep it fast on a CPU:
most multiply-accumulates sit at 12x12 and 6x6 where the channels are.
"""
from __future__ import annotations

from torch import nn

from emovision.models import activation, register_model

TRUNK_DROPOUT_SCALE = 0.3  # spatial dropout in the trunk is a fraction of the head's


def conv_bn(cin: int, cout: int, act: str) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), activation(act))


class SqueezeExcite(nn.Module):
    """Channel attention: re-weight channels by a gate computed from their global average."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        hidden = max(8, channels // reduction)
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True),
                                  nn.Conv2d(hidden, channels, 1), nn.Sigmoid())

    def forward(self, x):
        return x * self.gate(x)


class CnnSmall(nn.Module):
    def __init__(self, num_classes: int = 7, in_chans: int = 1, width: int = 32, dropout: float = 0.3,
                 activation: str = "elu"):
        super().__init__()
        # channels per stage: w/2, w, 2w, 4w (48, 24, 12, 6 px)
        chans = [max(8, width // 2), width, 2 * width, 4 * width]
        trunk_p = dropout * TRUNK_DROPOUT_SCALE
        layers: list[nn.Module] = []
        cin = in_chans
        for i, c in enumerate(chans):
            layers += [conv_bn(cin, c, activation), conv_bn(c, c, activation)]
            if i < len(chans) - 1:
                layers += [nn.MaxPool2d(2), nn.Dropout2d(trunk_p)]
            cin = c
        self.features = nn.Sequential(*layers)
        self.se = SqueezeExcite(cin)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(cin, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.head(self.se(self.features(x)))


@register_model("cnn_small")
def cnn_small(num_classes: int = 7, in_chans: int = 1, width: int = 32, dropout: float = 0.3,
              activation: str = "elu") -> nn.Module:
    return CnnSmall(num_classes, in_chans, width, dropout, activation)
