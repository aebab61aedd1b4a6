"""Swapping a module instance's `forward` for a faster one with the same numbers, and back (lora_fast, fast_dropout)."""

from __future__ import annotations

import types
from typing import Callable

from torch import nn


def install(model: nn.Module, choose: Callable[[nn.Module], Callable | None]) -> int:
    """Bind `choose(module)` (a function of (self, ...), or None to leave it) as each module's forward; returns how many."""
    count = 0
    for module in model.modules():
        forward = choose(module)
        if forward is not None:
            module.forward = types.MethodType(forward, module)
            count += 1
    return count


def uninstall(model: nn.Module, forwards: tuple[Callable, ...]) -> int:
    """The class's own forward again wherever one of `forwards` was bound; returns how many."""
    count = 0
    for module in model.modules():
        if getattr(module.forward, "__func__", None) in forwards:
            del module.forward
            count += 1
    return count
