"""Model registry: `create_model(name, num_classes=7, **kwargs)`.

Every architecture takes `dropout`, `width` and `activation`, works on (N, 1, 48, 48)
normalised faces (other sizes too: the head pools adaptively) and returns logits.
"""
from __future__ import annotations

import difflib
import inspect
from typing import Callable

import torch
from torch import nn

from emovision.errors import ConfigError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "elu": lambda: nn.ELU(inplace=True),
    "relu": lambda: nn.ReLU(inplace=True),
    "silu": lambda: nn.SiLU(inplace=True),
    "gelu": nn.GELU,
}


def register_model(name: str):
    def wrap(fn):
        _REGISTRY[name] = fn
        return fn
    return wrap


def list_models() -> list[str]:
    _load_architectures()
    return sorted(_REGISTRY)


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ConfigError(f"unknown activation '{name}'; valid: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def create_model(name: str, num_classes: int = 7, in_chans: int = 1, **kwargs) -> nn.Module:
    _load_architectures()
    if name not in _REGISTRY:
        match = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f" (did you mean '{match[0]}'?)" if match else ""
        raise ConfigError(f"unknown model '{name}'{hint}; valid: {', '.join(sorted(_REGISTRY))}")
    builder = _REGISTRY[name]
    accepted = set(inspect.signature(builder).parameters)
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ConfigError(f"model '{name}' has no argument {', '.join(unknown)}; "
                          f"valid: {', '.join(sorted(accepted))}")
    return builder(num_classes=num_classes, in_chans=in_chans, **kwargs)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: tuple[int, ...] = (1, 1, 48, 48)) -> int:
    """Multiply-accumulates of Conv2d and Linear layers for one input of `input_size`."""
    total = 0

    def conv_hook(m: nn.Conv2d, _inp, out):
        nonlocal total
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        total += out.numel() // out.shape[0] * k

    def linear_hook(m: nn.Linear, _inp, out):
        nonlocal total
        total += out.numel() // out.shape[0] * m.in_features

    hooks = [m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else linear_hook)
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(input_size, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return int(total)


def _load_architectures() -> None:
    # Importing the modules runs their @register_model decorators.
    from emovision.models import cnn, resnet  # noqa: F401
