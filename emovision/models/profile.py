"""Model size and cost: parameters and multiply-accumulates (MACs) of one forward pass."""
from __future__ import annotations

import torch
from torch import nn


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with requires_grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_macs(model: nn.Module, input_size: tuple[int, ...] = (1, 1, 48, 48)) -> int:
    """Multiply-accumulates per input of Conv2d and Linear layers (the rest is noise), measured
    with forward hooks on a zero input of `input_size`; the batch dimension is divided out."""

    total = 0

    def conv_macs(m: nn.Conv2d, _inputs, out: torch.Tensor) -> None:
        nonlocal total
        per_output = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        total += out[0].numel() * per_output

    def linear_macs(m: nn.Linear, _inputs, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() // out.shape[0] * m.in_features

    hooks = [m.register_forward_hook(conv_macs if isinstance(m, nn.Conv2d) else linear_macs)
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()  # BatchNorm must not update its running statistics from the dummy input
    try:
        with torch.no_grad():
            model(torch.zeros(input_size, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return int(total)
