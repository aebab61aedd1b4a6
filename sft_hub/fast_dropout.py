"""The model's own `nn.Dropout` layers on CPU with torch's draws from a compiled kernel: the same numbers, faster.

torch's CPU dropout draws its mask with a serial Mersenne-Twister loop (~5 ns an element; a MiniLM step
on SST-2 batches draws ~2.8M for its hidden and attention-output dropouts) and keeps the float noise
tensor for backward. `install(model)` routes each plain `nn.Dropout` module through `sft_hub.native`:
the same keep-mask from the same generator draws (so the same outputs, gradients and generator state,
bit for bit), drawn a block at a time, with a boolean mask kept for backward instead of floats.

Only where that holds: a module in training mode, 0 < p < 1, not in place, a float32 CPU tensor, no
autocast, and the compiled kernel built and checked against torch on this machine; everything else
(GPU tensors, bf16, `F.dropout` calls inside attention implementations) runs torch's own dropout.
`uninstall(model)` restores torch's path everywhere.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sft_hub import forward_swap, native


class _MaskedScale(torch.autograd.Function):
    """x * keep / keep_prob as torch's dropout computes it, with a boolean mask saved for backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, keep: torch.Tensor, keep_prob: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.keep_prob = keep_prob
        return native.apply_mask(x, keep, keep_prob)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return native.apply_mask(grad, keep, ctx.keep_prob), None, None


def _forward(self: nn.Dropout, x: torch.Tensor) -> torch.Tensor:
    if (not self.training or self.inplace or not 0 < self.p < 1 or x.device.type != "cpu" or x.dtype != torch.float32
            or torch.is_autocast_enabled("cpu") or not native.available()):
        return type(self).forward(self, x)
    keep_prob = 1 - self.p
    return _MaskedScale.apply(x, native.keep_mask(x.shape, keep_prob), keep_prob)


def install(model: nn.Module) -> int:
    """Route every plain `nn.Dropout` of `model` through the compiled draws; returns how many modules."""
    return forward_swap.install(model, lambda m: _forward if type(m) is nn.Dropout else None)


def uninstall(model: nn.Module) -> int:
    """torch's own dropout everywhere again."""
    return forward_swap.uninstall(model, (_forward,))
