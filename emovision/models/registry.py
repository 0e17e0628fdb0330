"""The model registry: architectures register a builder by name; `create_model` builds one.

Unknown names and arguments fail as `ConfigError` naming the model and the valid choices, so
a typo in params.yaml's `model` section ends in one actionable line, not a TypeError.
"""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, TypeVar

from torch import nn

from emovision.errors import ConfigError

Builder = TypeVar("Builder", bound=Callable[..., nn.Module])

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_COMPOSED: set[str] = set()  # built from trained models (ensembles), never trained from params
_FIXED_ARGS = ("num_classes", "in_chans")  # passed by create_model itself, never via **kwargs
MIN_WIDTH = 4


def register_model(name: str, trainable: bool = True) -> Callable[[Builder], Builder]:
    """Decorator: make `builder(num_classes, in_chans, **kwargs) -> nn.Module` available as `name`
    (`trainable=False`: composed from trained models, so params.yaml cannot train it)."""

    def add(builder: Builder) -> Builder:
        known = _MODELS.get(name)
        if known is not None and known.__qualname__ != builder.__qualname__:
            raise ValueError(f"model name '{name}' is already registered by {known.__module__}.{known.__qualname__}")
        _MODELS[name] = builder
        if not trainable:
            _COMPOSED.add(name)
        return builder

    return add


def list_models() -> list[str]:
    """Registered architecture names, sorted."""
    return sorted(_MODELS)


def trainable_models() -> list[str]:
    """The architectures params.yaml's model.name may train, sorted."""
    return sorted(set(_MODELS) - _COMPOSED)


def model_arguments(name: str) -> list[str]:
    """The keyword arguments `create_model(name, ...)` accepts besides num_classes and in_chans."""
    builder = _get_builder(name)
    return [p for p in inspect.signature(builder).parameters if p not in _FIXED_ARGS]


def create_model(name: str, num_classes: int = 7, in_chans: int = 1, **kwargs: Any) -> nn.Module:
    """Build architecture `name` for (N, in_chans, H, W) inputs, returning (N, num_classes) logits."""
    valid = model_arguments(name)
    for key in kwargs:
        if key not in valid:
            raise ConfigError(f"model '{name}' has no argument '{key}'{_suggest(key, valid)}; "
                              f"valid: {', '.join(valid)}")
    _check_values(name, num_classes=num_classes, in_chans=in_chans, **kwargs)
    return _MODELS[name](num_classes=num_classes, in_chans=in_chans, **kwargs)


def _get_builder(name: str) -> Callable[..., nn.Module]:
    if name not in _MODELS:
        raise ConfigError(f"unknown model '{name}'{_suggest(name, _MODELS)}; valid: {', '.join(list_models())}")
    return _MODELS[name]


def _suggest(name: str, valid) -> str:
    match = difflib.get_close_matches(name, list(valid), n=1)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _check_values(name: str, **args: Any) -> None:
    """Range checks for the arguments every architecture shares (activation is checked where built)."""
    rules = {
        "num_classes": (lambda v: isinstance(v, int) and v >= 1, ">= 1"),
        "in_chans": (lambda v: isinstance(v, int) and v >= 1, ">= 1"),
        "width": (lambda v: isinstance(v, int) and v >= MIN_WIDTH, f"an int >= {MIN_WIDTH}"),
        "dropout": (lambda v: isinstance(v, (int, float)) and 0 <= v < 1, "in [0, 1)"),
    }
    for key, value in args.items():
        if key in rules and not rules[key][0](value):
            raise ConfigError(f"model '{name}': {key} must be {rules[key][1]}, got {value!r}")
