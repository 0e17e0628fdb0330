"""Registry sweep: every model trains a step; size bounds, arguments, errors and MAC counting."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from emovision.errors import ConfigError
from emovision.models import ACTIVATIONS, count_macs, count_params, create_model, list_models, trainable_models
from emovision.models.layers import ELU

# Parameter bounds at each model's default width; a new architecture must add its entry.
PARAM_BOUNDS = {"cnn_small": (500_000, 1_000_000), "resnet_fer": (1_000_000, 5_000_000)}


@pytest.mark.parametrize("name", trainable_models())
def test_trains_one_step(name):
    torch.manual_seed(0)
    model = create_model(name, dropout=0.2).train()
    x = torch.randn(2, 1, 48, 48, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    F.cross_entropy(out, torch.tensor([0, 6])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", trainable_models())
def test_other_sizes_classes_and_memory_formats(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, width=8).eval()
    assert model(torch.randn(1, 1, 64, 56)).shape == (1, 3)
    x = torch.randn(2, 1, 48, 48)
    channels_last = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(channels_last, model(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", trainable_models())
def test_size_and_cost(name):
    low, high = PARAM_BOUNDS[name]
    model = create_model(name)
    assert low <= count_params(model) <= high
    assert count_params(create_model(name, width=16)) < count_params(model)
    macs = count_macs(model)
    assert count_params(model) < macs < 2e9  # convs reuse each weight at many positions


@pytest.mark.parametrize("name", trainable_models())
def test_dropout_argument_sets_every_dropout(name):
    def rates(dropout: float) -> list[float]:
        return [m.p for m in create_model(name, dropout=dropout).modules() if isinstance(m, (nn.Dropout, nn.Dropout2d))]

    assert 0.45 in rates(0.45)  # the head's dropout is the argument itself
    assert all(0 < p <= 0.45 for p in rates(0.45))  # the trunk's are scaled from it
    assert set(rates(0.0)) == {0.0}


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_every_activation_builds_and_runs(activation):
    model = create_model("cnn_small", width=8, activation=activation).train()
    model(torch.randn(2, 1, 48, 48)).sum().backward()


def test_unknown_names_arguments_and_values():
    with pytest.raises(ConfigError, match=r"unknown model 'cnn_smal' \(did you mean 'cnn_small'\?\); "
                                          r"valid: cnn_small, ensemble, resnet_fer"):
        create_model("cnn_smal")
    with pytest.raises(ConfigError, match=r"model 'resnet_fer' has no argument 'widht' \(did you mean 'width'\?\); "
                                          r"valid: width, dropout, activation"):
        create_model("resnet_fer", widht=32)
    with pytest.raises(ConfigError, match=r"model 'cnn_small' has no argument 'momentum'; valid:"):
        create_model("cnn_small", momentum=0.9)
    with pytest.raises(ConfigError, match=r"unknown activation 'tanh'; valid: elu, relu, silu, gelu"):
        create_model("cnn_small", activation="tanh")
    with pytest.raises(ConfigError, match=r"model 'cnn_small': dropout must be in \[0, 1\), got 1.0"):
        create_model("cnn_small", dropout=1.0)
    with pytest.raises(ConfigError, match=r"width must be an int >= 4, got 2"):
        create_model("resnet_fer", width=2)


def test_fast_cpu_elu_matches_torch():
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(ELU(), (x,))
    x = torch.linspace(-8, 8, 1001, requires_grad=True)
    ref = torch.linspace(-8, 8, 1001, requires_grad=True)
    ELU()(x).square().sum().backward()
    F.elu(ref).square().sum().backward()
    torch.testing.assert_close(ELU()(x), F.elu(ref))
    torch.testing.assert_close(x.grad, ref.grad)


def test_resnet_blocks_start_as_identity():
    model = create_model("resnet_fer", width=8)
    assert all(torch.count_nonzero(block.bn2.weight) == 0 for block in model.blocks)


def test_count_macs_matches_hand_formula():
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=4),
                        nn.Flatten(), nn.Linear(8 * 24 * 24, 7))
    expected = 48 * 48 * 8 * (3 * 3 * 1) + 24 * 24 * 8 * (3 * 3 * 2) + 8 * 24 * 24 * 7
    assert count_macs(net) == expected
    assert count_macs(net, (4, 1, 48, 48)) == expected  # per input, whatever the batch


def test_count_macs_leaves_model_untouched():
    model = create_model("cnn_small", width=8).train()
    stats = [b.running_mean.clone() for b in model.modules() if isinstance(b, nn.BatchNorm2d)]
    count_macs(model)
    assert model.training
    after = [b.running_mean for b in model.modules() if isinstance(b, nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(stats, after))
