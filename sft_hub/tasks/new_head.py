"""A checkpoint's classifier is kept only for the labels it was trained on; for other labels the head starts new.

transformers' loaders keep a checkpoint's classifier whenever its shape fits. A base fine-tuned on other
classes of the same number (digits 0-4, then 5-9; one 3-class task, then another) would then start the
new task from the old one's head: each new class inheriting an unrelated class's weights, and `head`,
`partial` and every peft method "training the new head" from them. So when the checkpoint names its
labels and they are not the task's (same names, same order), the head modules it filled are
initialised as the loader initialises a missing head (the model's own `_init_weights`, under the run's
seed). A checkpoint continued on its own labels keeps its head; one whose labels are transformers'
placeholders (`LABEL_0`, ...) says nothing about them and keeps it too, as transformers does.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch

log = logging.getLogger("sft_hub")


def checkpoint_labels(config: Any) -> list[str] | None:
    """The label names a loaded (not overridden) config was saved with; None for placeholders or none."""
    id2label = getattr(config, "id2label", None) or {}
    names = [str(id2label[i]) for i in sorted(id2label, key=int)]
    return None if not names or names == [f"LABEL_{i}" for i in range(len(names))] else names


def renew_head(net: torch.nn.Module, head: list[str], before: list[str] | None, labels: list[str] | None,
               fresh_keys: Iterable[str] = ()) -> list[str]:
    """Re-initialise the head modules that the checkpoint filled for labels `before` when the task's `labels`
    differ; `fresh_keys` are the parameter names the loader initialised itself (missing or mismatched),
    whose modules are left alone. Returns the renewed module names."""
    if before is None or labels is None or list(labels) == before:
        return []
    fresh, modules = set(fresh_keys), dict(net.named_modules())
    renewed = []
    for name in head:
        params = list(modules[name].named_parameters())
        if not params or all(f"{name}.{key}" in fresh for key, _ in params):
            continue
        for _, param in params:
            param._is_hf_initialized = False  # transformers' init functions skip tensors flagged as loaded
        for module in modules[name].modules():
            if hasattr(net, "_init_weights"):
                net._init_weights(module)
            elif hasattr(module, "reset_parameters") and next(module.parameters(recurse=False), None) is not None:
                module.reset_parameters()
        renewed.append(name)
    if renewed:
        shown = lambda names: ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")  # noqa: E731
        log.info("model: the checkpoint's head was trained for labels [%s], not this task's [%s]; %s initialised anew",
                 shown(before), shown(list(labels)), ", ".join(renewed))
    return renewed
