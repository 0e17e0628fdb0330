"""resnet_fer: a residual network for 48x48 faces, aimed at accuracy (GPU training).

A 3x3 stem without striding or pooling (a 48-px face has no pixels to spare, unlike the
224-px ImageNet images ResNet's 4x stem was made for), then basic residual blocks in four
stages at 48, 24, 12 and 6 px. The last stage stays at 4x width rather than 8x: at 6x6 px
the extra channels would triple the parameter count for little accuracy.
"""
from __future__ import annotations

import torch
from torch import nn

from emovision.models.layers import conv_bn_act, init_weights, make_activation
from emovision.models.registry import register_model

# (channels as a multiple of `width`, residual blocks) per stage; stages after the first halve the size.
STAGES = ((1, 2), (2, 2), (4, 2), (4, 1))
TRUNK_DROPOUT_SCALE = 0.2  # spatial dropout inside each residual branch, as a fraction of the head's


class BasicBlock(nn.Module):
    """conv-BN-act-conv-BN plus a shortcut, then act; the branch's last BN starts at zero so
    every block begins as the identity and the deep network trains like a shallow one."""

    def __init__(self, cin: int, cout: int, stride: int, act: str, dropout: float):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = make_activation(act)
        self.drop = nn.Dropout2d(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act2 = make_activation(act)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            # ResNet-D shortcut: average-pool then 1x1 conv, so no input pixel is skipped.
            pool = nn.AvgPool2d(stride, ceil_mode=True, count_include_pad=False) if stride > 1 else nn.Identity()
            self.shortcut = nn.Sequential(pool, nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.drop(self.act1(self.bn1(self.conv1(x))))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class ResNetFer(nn.Module):
    def __init__(self, num_classes: int = 7, in_chans: int = 1, width: int = 64, dropout: float = 0.3,
                 activation: str = "elu"):
        super().__init__()
        self.stem = conv_bn_act(in_chans, width, activation)
        blocks: list[nn.Module] = []
        cin = width
        for i, (mult, n) in enumerate(STAGES):
            cout = mult * width
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(BasicBlock(cin, cout, stride, activation, dropout * TRUNK_DROPOUT_SCALE))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(cin, num_classes)
        init_weights(self)
        for block in self.blocks:
            nn.init.zeros_(block.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.classifier(self.dropout(self.pool(x).flatten(1)))


@register_model("resnet_fer")
def resnet_fer(num_classes: int = 7, in_chans: int = 1, width: int = 64, dropout: float = 0.3,
               activation: str = "elu") -> nn.Module:
    return ResNetFer(num_classes, in_chans, width, dropout, activation)
