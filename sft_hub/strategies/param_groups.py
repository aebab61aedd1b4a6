"""Discriminative learning rates: optimizer parameter groups by depth (`layer_decay`) and for the head (`head_lr`).

Depth follows the model's own description (ModelInfo), the same for every family: the head and the modules
between the last block and the head (final norm, pooler) are depth 0, block i of L is depth L - i (the top block
is 1), and everything below the first block (embeddings, a ResNet stem) is depth L + 1. A parameter at depth d
gets `lr * layer_decay ** d`, as BEiT and timm's `param_groups_layer_decay` do. timm's helper is not reused: it
needs a timm model's `group_matcher` and names inside `timm_model`, so it fits neither BERT / wav2vec2 / AST nor
the HF wrapper around timm models, while ModelInfo gives the same bottom-to-top order for all of them.

Weight decay is left out for the parameters `transformers.Trainer` leaves out (biases, LayerNorm and `norm`
weights: its own `get_decay_parameter_names`); those groups carry `weight_decay: 0.0`, the others none, so the
engine fills in `training.weight_decay`. Names of a peft-wrapped model are matched without peft's prefixes.
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn
from transformers import Trainer

from sft_hub.errors import ConfigError
from sft_hub.model_info import ModelInfo

PEFT_PREFIX = re.compile(r"^base_model\.model\.")
PEFT_WRAPPERS = re.compile(r"\.(modules_to_save|original_module)\.[^.]+(?=\.)")  # `classifier.modules_to_save.default.weight`


def plain_name(name: str) -> str:
    """A parameter's name as in the task's model (peft's `base_model.model.` and head-wrapper parts removed)."""
    return PEFT_WRAPPERS.sub("", PEFT_PREFIX.sub("", name))


def _under(name: str, modules: list[str]) -> bool:
    return any(name == m or name.startswith(m + ".") for m in modules)


def depth(name: str, info: ModelInfo) -> int:
    """0 for the head and final modules, L - i for block i of L, L + 1 below the blocks."""
    name = plain_name(name)
    if _under(name, info.head) or _under(name, info.final):
        return 0
    for i, block in enumerate(info.blocks):
        if _under(name, [block]):
            return len(info.blocks) - i
    return len(info.blocks) + 1


def is_head(name: str, info: ModelInfo) -> bool:
    return _under(plain_name(name), info.head)


def check_rates(layer_decay: float | None, head_lr: float | None, where: str) -> None:
    if layer_decay is not None and not 0 < layer_decay <= 1:
        raise ConfigError(f"{where}.layer_decay: must be in (0, 1] (lr x decay^depth from the top), got {layer_decay!r}")
    if head_lr is not None and not head_lr > 0:
        raise ConfigError(f"{where}.head_lr: must be a positive learning rate, got {head_lr!r}")


def build_groups(model: nn.Module, info: ModelInfo, lr: float, layer_decay: float | None = None,
                 head_lr: float | None = None, include: set[str] | None = None) -> list[dict[str, Any]]:
    """Groups of the parameters that train (requires_grad, or named in `include`), one per (lr, decays).

    `include`: parameters frozen now that gradual unfreezing thaws later; they get their groups up front, so
    the optimizer (and a resume across the unfreeze point) never changes shape.
    """
    decays = set(Trainer.get_decay_parameter_names(None, model))  # what Trainer's default groups decay
    groups: dict[tuple[float, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not (param.requires_grad or (include and name in include)):
            continue
        rate = head_lr if head_lr is not None and is_head(name, info) else lr * (layer_decay or 1.0) ** depth(name, info)
        key = (rate, name in decays)
        if key not in groups:
            groups[key] = {"params": [], "lr": rate} | ({} if key[1] else {"weight_decay": 0.0})
        groups[key]["params"].append(param)
    return [groups[k] for k in sorted(groups, key=lambda k: (k[0], k[1]))]
