"""resnet_fer: a pre-activation ResNet for 48x48 faces, aimed at accuracy (<= 5M params).

A 3x3 stem without striding or pooling (48x48 faces have no pixels to spare), then four
stages of two basic blocks at 48, 24, 12 and 6 pixels with widths w, 2w, 4w, 8w.
"""
from __future__ import annotations

from torch import nn

from emovision.models import activation, register_model

BLOCKS_PER_STAGE = (2, 2, 2, 2)


class PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, act: str, dropout: float):
        super().__init__()
        self.bn1, self.act1 = nn.BatchNorm2d(cin), activation(act)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.act2 = nn.BatchNorm2d(cout), activation(act)
        self.drop = nn.Dropout2d(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = (nn.Conv2d(cin, cout, 1, stride, bias=False)
                         if stride != 1 or cin != cout else None)

    def forward(self, x):
        out = self.act1(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.drop(self.act2(self.bn2(out))))
        return out + skip


class ResNetFer(nn.Module):
    def __init__(self, num_classes: int = 7, in_chans: int = 1, width: int = 32, dropout: float = 0.3,
                 activation: str = "elu"):
        super().__init__()
        from emovision.models import activation as act_layer

        self.stem = nn.Conv2d(in_chans, width, 3, 1, 1, bias=False)
        blocks: list[nn.Module] = []
        cin = width
        for i, n in enumerate(BLOCKS_PER_STAGE):
            cout = width * 2**i
            for j in range(n):
                blocks.append(PreActBlock(cin, cout, 2 if (j == 0 and i > 0) else 1, activation,
                                          dropout * 0.2))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.BatchNorm2d(cin), act_layer(activation), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for block in self.blocks:  # start each residual branch near zero: an identity network
            nn.init.zeros_(block.conv2.weight)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


@register_model("resnet_fer")
def resnet_fer(num_classes: int = 7, in_chans: int = 1, width: int = 32, dropout: float = 0.3,
               activation: str = "elu") -> nn.Module:
    return ResNetFer(num_classes, in_chans, width, dropout, activation)
