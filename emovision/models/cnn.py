"""cnn_small: a compact VGG-style CNN for 48x48 grayscale faces, fast to train on a CPU.

Four stages of two 3x3 conv + BatchNorm + activation, each ending in a 2x2 max-pool and
spatial dropout (48 -> 24 -> 12 -> 6 -> 3 px), then one wide conv at 3x3 px,
squeeze-and-excitation, global average pooling and a dropout + linear head.

Channels grow as the image shrinks, so parameters sit where they are cheap: at width 32 the
3x3-px conv holds half the parameters for a twelfth of the multiply-accumulates, while the
48-px stage stays narrow (w/2 channels) because full-resolution activations are what a CPU
training step spends its time on.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from emovision.models.layers import SqueezeExcite, conv_bn_act, init_weights
from emovision.models.registry import register_model

# (channels as a multiple of `width`, convs) per stage; each stage ends in a 2x2 max-pool.
STAGES = ((0.5, 2), (1, 2), (2, 2), (4, 2))
# One conv at 3x3 px after the last pool: every output sees the whole face, so it can combine
# regions (brows with mouth) before global pooling throws their positions away.
CONTEXT_CHANNELS = 8
TRUNK_DROPOUT_SCALE = 0.3  # spatial dropout after each pool, as a fraction of the head's dropout


class CnnSmall(nn.Module):
    def __init__(self, num_classes: int = 7, in_chans: int = 1, width: int = 32, dropout: float = 0.3,
                 activation: str = "elu"):
        super().__init__()
        stages: OrderedDict[str, nn.Module] = OrderedDict()
        cin = in_chans
        for i, (mult, convs) in enumerate(STAGES, start=1):
            cout = max(4, round(mult * width))
            layers = [conv_bn_act(cin if j == 0 else cout, cout, activation) for j in range(convs)]
            layers += [nn.MaxPool2d(2, ceil_mode=True), nn.Dropout2d(dropout * TRUNK_DROPOUT_SCALE)]
            stages[f"stage{i}"] = nn.Sequential(*layers)
            cin = cout
        stages["context"] = conv_bn_act(cin, CONTEXT_CHANNELS * width, activation)
        self.features = nn.Sequential(stages)
        self.attention = SqueezeExcite(CONTEXT_CHANNELS * width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(CONTEXT_CHANNELS * width, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attention(self.features(x))
        return self.classifier(self.dropout(self.pool(x).flatten(1)))


@register_model("cnn_small")
def cnn_small(num_classes: int = 7, in_chans: int = 1, width: int = 32, dropout: float = 0.3,
              activation: str = "elu") -> nn.Module:
    return CnnSmall(num_classes, in_chans, width, dropout, activation)
