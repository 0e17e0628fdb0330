"""Registry sweep: every model trains a step on a (2, 1, 48, 48) batch; bounds and errors."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from emovision.errors import ConfigError
from emovision.models import count_macs, count_params, create_model, list_models

PARAM_BOUNDS = {"cnn_small": (500_000, 1_000_000), "resnet_fer": (1_000_000, 5_000_000)}
DEFAULT_WIDTH = {"cnn_small": 48, "resnet_fer": 32}  # params.yaml's model.width for cnn_small


@pytest.mark.parametrize("name", list_models())
def test_forward_backward(name):
    torch.manual_seed(0)
    model = create_model(name, dropout=0.2).train()
    x = torch.randn(2, 1, 48, 48, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert x.grad.abs().sum() > 0
    assert create_model(name, num_classes=3).eval()(torch.randn(1, 1, 64, 64)).shape == (1, 3)


@pytest.mark.parametrize("name", list_models())
def test_size_and_dropout_argument(name):
    low, high = PARAM_BOUNDS[name]
    assert low <= count_params(create_model(name, width=DEFAULT_WIDTH[name])) <= high
    rates = {m.p for m in create_model(name, dropout=0.45).modules() if isinstance(m, (nn.Dropout, nn.Dropout2d))}
    assert 0.45 in rates  # the head's dropout is the argument itself


def test_unknown_name_and_kwarg():
    with pytest.raises(ConfigError, match=r"unknown model 'cnn_smal' \(did you mean 'cnn_small'\?\); valid: cnn_small"):
        create_model("cnn_smal")
    with pytest.raises(ConfigError, match="model 'cnn_small' has no argument depth"):
        create_model("cnn_small", depth=3)
    with pytest.raises(ConfigError, match="unknown activation 'tanh'"):
        create_model("cnn_small", activation="tanh")


def test_count_macs_matches_hand_formula():
    conv = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 48 * 48, 7))
    assert count_macs(conv) == 48 * 48 * 8 * 9 + 8 * 48 * 48 * 7
