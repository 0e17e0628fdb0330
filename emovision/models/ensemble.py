"""ensemble: several trained models as one, averaging their class probabilities.

An ensemble is an architecture like any other, so everything that builds, saves, loads,
scores, serves or exports a model (emovision.artifact, scoring, the MLflow model, ONNX)
handles it unchanged: its kwargs list the members' architectures, its state dict holds the
members' weights under `members.<i>.`, and its output is the log of the members' mean
softmax probabilities, so the softmax every caller applies gives back that mean exactly.
Members share one preprocessing (the composing code checks it: emovision.artifact.ensemble_of).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn

from emovision.errors import ConfigError
from emovision.models.registry import create_model, register_model


class Ensemble(nn.Module):
    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logp = torch.stack([m(x).float().log_softmax(1) for m in self.members])
        return torch.logsumexp(logp, 0) - math.log(len(self.members))


@register_model("ensemble", trainable=False)
def ensemble(num_classes: int = 7, in_chans: int = 1, members: Sequence[dict[str, Any]] = ()) -> nn.Module:
    """`members`: [{"arch": name, "arch_kwargs": {...}}, ...], at least two."""
    if not isinstance(members, (list, tuple)) or len(members) < 2:
        raise ConfigError("model 'ensemble': members must list at least two architectures")
    built = []
    for i, m in enumerate(members):
        if not isinstance(m, dict) or not isinstance(m.get("arch"), str) or not isinstance(m.get("arch_kwargs"), dict):
            raise ConfigError(f"model 'ensemble': member {i} must be {{'arch': name, 'arch_kwargs': {{...}}}}")
        if m["arch"] == "ensemble":
            raise ConfigError(f"model 'ensemble': member {i} is itself an ensemble; list its members instead")
        built.append(create_model(m["arch"], num_classes, in_chans, **m["arch_kwargs"]))
    return Ensemble(built)
