"""A cheaper training step for peft's vanilla LoRA `Linear` layers on CPU, with the same numbers.

Where a LoRA step's time went (torch.profiler, MiniLM-L6 on SST-2 batches, LoRA on query/key/value/dense,
dropout 0.1, one CPU thread): the dropout mask of every adapted layer's input (`bernoulli_` draws one
Mersenne-Twister double per element, serially: ~16% of the step), the rank-8 matmuls of the backward
pass (autograd multiplies `grad @ B` and `grad.T @ h` in the layouts that BLAS handles 10-20x slower
than the transposed ones for an inner size of 8: ~13%), and float copies of the mask and of the
dropped input kept for backward (two tensors the size of the input per layer).

`LoraDelta` computes `lora_B(lora_A(dropout(x))) * scaling` exactly as peft does in the forward pass
(same mask from the same RNG draws, same ops, so the output is bit-identical), keeps only a boolean
mask and the input for backward (the dropped input is recomputed), and does the backward matmuls in
the fast layouts (equal to autograd's to float rounding; tests compare both paths to 1e-6). On CPU
tensors the mask comes from `sft_hub.native.keep_mask`: torch's own Mersenne-Twister draws, the same
mask and generator state, computed a block at a time (~14x faster; torch's `bernoulli_` where the
compiled kernel is unavailable or disagrees with torch on this machine). Where the bits stay the same,
no layer-sized temporaries are made (the sum with the base output inside `addmm`, the delta added in
place where there is no mask): fewer holes in the heap, a lower LoRA peak RSS (benchmarks/memory.py).

`install(model)` swaps the forward of each plain LoRA Linear (no DoRA or other variant, no LoRA bias,
no mixed-adapter batches, no autocast); anything else falls through to peft's own forward. LoRA Conv2d
layers (timm CNNs) keep peft's ops and only get the in-place scaling and sum. Parameters, module
names, saving, loading and merging are peft's, untouched.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sft_hub import forward_swap, native


class LoraDelta(torch.autograd.Function):
    """`result + F.linear(F.linear(dropout(x), a), b) * scaling` with a boolean dropout mask (`keep`, or None).

    The scaling is applied to the rank-r side (`h * scaling`, and to the small gradients) instead of the
    layer-sized output and its gradient, and the sum with the base layer's `result` is the matmul's own
    accumulation (`addmm`): three fewer passes over a layer-sized tensor per adapted layer and step. With a
    power-of-two scaling (alpha / r, 2 in the recipes) every product is the same float; otherwise equal to
    float rounding (tests: 1e-6).
    """

    @staticmethod
    def forward(ctx: Any, result: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, keep: torch.Tensor | None,
                keep_prob: float, scaling: float) -> torch.Tensor:
        # torch's CPU dropout: noise = bernoulli(keep_prob) as floats, noise /= keep_prob, x * noise
        dropped = native.apply_mask(x, keep, keep_prob) if keep is not None else x
        h = F.linear(dropped, a)
        ctx.save_for_backward(x, a, b, keep, h)
        ctx.keep_prob, ctx.scaling = keep_prob, scaling
        if result.dtype != h.dtype:  # e.g. a bf16 base with float32 adapters: the sum promotes, as peft's does
            return result + F.linear(h * scaling, b)
        out = torch.addmm(result.reshape(-1, result.shape[-1]), (h * scaling).reshape(-1, h.shape[-1]), b.t())
        return out.view(result.shape)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        x, a, b, keep, h = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])  # (tokens, out)
        h2 = h.reshape(-1, h.shape[-1])  # (tokens, r)
        # every product below is written so that BLAS sees the rank-r side as the short, transposed operand
        grad_b = (h2.t() @ g).t() * ctx.scaling if ctx.needs_input_grad[3] else None  # = scaling * g.T @ h
        grad_h = (b.t() @ g.t()).t() * ctx.scaling  # = scaling * g @ b
        grad_a = grad_x = None
        if ctx.needs_input_grad[2]:
            dropped = (native.apply_mask(x, keep, ctx.keep_prob) if keep is not None else x).reshape(-1, x.shape[-1])
            grad_a = grad_h.t() @ dropped
        if ctx.needs_input_grad[1]:
            if keep is None:
                grad_x = (a.t() @ grad_h.t()).t().reshape(x.shape)  # = grad_h @ a
            else:  # the mask wants a contiguous gradient: this layout costs less than the transposed one + a copy
                grad_x = native.apply_mask((grad_h @ a).reshape(x.shape), keep, ctx.keep_prob)
        return grad, grad_x, grad_a, grad_b, None, None, None


def _keep_mask(dropout: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor | None, float] | None:
    """(mask, keep probability) drawn as torch's dropout draws it; (None, 1.0) for no dropout; None: not handled."""
    if isinstance(dropout, nn.Identity) or (isinstance(dropout, nn.Dropout) and (not dropout.training or dropout.p == 0)):
        return None, 1.0
    if type(dropout) is not nn.Dropout or not 0 < dropout.p < 1 or dropout.inplace:
        return None
    keep_prob = 1 - dropout.p
    # same generator, same element order and the same draws as `empty_like(x).bernoulli_(keep_prob)`
    if x.device.type == "cpu":
        return native.keep_mask(x.shape, keep_prob), keep_prob  # the same draws, ~14x faster
    return torch.empty_like(x, dtype=torch.bool).bernoulli_(keep_prob), keep_prob


def _forward(self: nn.Module, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """peft's `lora.Linear.forward` for the plain case, the LoRA branch through `LoraDelta`."""
    reference = type(self).forward
    if args or kwargs or self.disable_adapters or self.merged or torch.is_autocast_enabled(x.device.type):
        return reference(self, x, *args, **kwargs)  # autocast (bf16/fp16): peft's path, whose casts autograd tracks
    active = [n for n in self.active_adapters if n in self.lora_A.keys()]
    plans = []
    for name in active:
        a, b = self.lora_A[name], self.lora_B[name]
        if name in self.lora_variant or a.bias is not None or b.bias is not None or type(a) is not nn.Linear or type(b) is not nn.Linear:
            return reference(self, x)
        plans.append((name, a, b))
    result = self.base_layer(x)
    result_dtype = result.dtype
    inplace = _can_add_in_place(self.base_layer, nn.Linear)
    for name, a, b in plans:
        x = self._cast_input_dtype(x, a.weight.dtype)
        mask = _keep_mask(self.lora_dropout[name], x)
        if mask is None:
            delta = b(a(self.lora_dropout[name](x))).mul_(self.scaling[name])
            result = result.add_(delta) if inplace and delta.dtype == result.dtype else result + delta
            continue
        result = LoraDelta.apply(result, x, a.weight, b.weight, mask[0], mask[1], self.scaling[name])
    return result.to(result_dtype)


def _can_add_in_place(base: nn.Module, kind: type) -> bool:
    """Whether the LoRA delta may be added into the base layer's output: the same sum, bit for bit, without an
    output-sized temporary. Only when nothing else can hold that output: a plain `kind` layer (which does not
    save its output for backward) with no forward hooks."""
    return type(base) is kind and not (base._forward_hooks or nn.modules.module._global_forward_hooks)


def _conv_forward(self: nn.Module, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """peft's `lora.Conv2d.forward` for plain LoRA, its ops unchanged; the scaling and the sum done in place."""
    reference = type(self).forward
    if args or kwargs or self.disable_adapters or self.merged or torch.is_autocast_enabled(x.device.type):
        return reference(self, x, *args, **kwargs)
    active = [n for n in self.active_adapters if n in self.lora_A.keys()]
    # lora_B's output is only scaled in place when lora_B is a plain conv (it does not save its output)
    if any(n in self.lora_variant or type(self.lora_B[n]) is not nn.Conv2d for n in active):
        return reference(self, x)
    result = self.base_layer(x)
    result_dtype = result.dtype
    inplace = _can_add_in_place(self.base_layer, nn.Conv2d)
    for name in active:
        x = self._cast_input_dtype(x, self.lora_A[name].weight.dtype)
        delta = self.lora_B[name](self.lora_A[name](self.lora_dropout[name](x))).mul_(self.scaling[name])
        result = result.add_(delta) if inplace and delta.dtype == result.dtype else result + delta
    return result.to(result_dtype)


def install(model: nn.Module) -> int:
    """Route every peft LoRA Linear (and Conv2d) of `model` through the fast step; returns how many layers were switched."""
    from peft.tuners.lora import Conv2d as LoraConv2d
    from peft.tuners.lora import Linear as LoraLinear

    def choose(module: nn.Module):
        if type(module) is LoraLinear and not getattr(module, "fan_in_fan_out", False):
            return _forward
        return _conv_forward if type(module) is LoraConv2d else None

    return forward_swap.install(model, choose)


def uninstall(model: nn.Module) -> int:
    """Back to peft's own forward everywhere (the reference path of benchmarks and tests)."""
    return forward_swap.uninstall(model, (_forward, _conv_forward))
