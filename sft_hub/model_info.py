"""`ModelInfo`: how a task describes its model to strategies (family, blocks, head, final, embeddings).

Tasks build it (`describe_model`) and strategies read it, so neither imports the other; it is re-exported
as `sft_hub.strategies.base.ModelInfo`. The helpers find a model's repeated blocks generically from its
module tree (BERT `encoder.layer.N`, timm ResNet stages `layerN`, ViT `blocks.N`, wav2vec2/AST encoder
layers), never from a list of checkpoints.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from torch import nn


@dataclass
class ModelInfo:
    family: str  # "bert", "resnet", "vit", "wav2vec2", "ast", "convnext", ...
    blocks: list[str]  # repeated block module names, bottom to top (e.g. "bert.encoder.layer.0")
    head: list[str]  # the new head's module names (trained by every strategy; peft `modules_to_save`)
    final: list[str] = field(default_factory=list)  # modules between the last block and the head (final norm, pooler)
    embeddings: list[str] = field(default_factory=list)  # modules below the first block
    modality: str = ""  # "text" | "image" | "audio": the fallback for per-family defaults of unknown families


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _size(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def repeated_blocks(model: nn.Module) -> list[str]:
    """The model's trunk: the largest run of same-type blocks, bottom to top.

    Candidates are a ModuleList (any length: a one-layer encoder is still a trunk) or a Sequential of >= 2
    children sharing one type and all holding weights (`encoder.layer`, `blocks`, `stages`), and numbered
    sibling containers of one type (ResNet's `layer1` .. `layer4`, not single layers such as `conv1`, `conv2`);
    the one holding the most parameters wins.
    """
    best: tuple[int, list[str]] = (0, [])
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        children = list(module.named_children())
        groups: list[list[tuple[str, nn.Module]]] = []
        if isinstance(module, nn.ModuleList) or isinstance(module, nn.Sequential) and len(children) >= 2:
            groups.append(children)
        numbered: dict[str, list[tuple[str, nn.Module]]] = {}
        for child_name, child in children:
            m = re.fullmatch(r"(\D+?)_?(\d+)", child_name)
            if m and isinstance(child, (nn.Sequential, nn.ModuleList)):
                numbered.setdefault(m.group(1), []).append((child_name, child))
        groups.extend(g for g in numbered.values() if len(g) >= 2)
        for group in groups:
            if not group or len({type(c) for _, c in group}) != 1 or not all(_has_params(c) for _, c in group):
                continue
            size = sum(_size(c) for _, c in group)
            if size > best[0]:
                best = (size, [prefix + n for n, _ in group])
    return best[1]


def around_blocks(model: nn.Module, blocks: list[str], head: list[str]) -> tuple[list[str], list[str]]:
    """(embeddings, final): modules with weights registered before the first block / after the last one.

    Walks from the blocks' parent up to the root; at each level the siblings before the path are below
    the trunk and those after it above (registration order, which transformers and timm keep in forward order).
    """
    if not blocks:
        return [], []
    first, last = blocks[0], blocks[-1]
    parent = first.rsplit(".", 1)[0] if "." in first else ""
    below, above = [], []
    path = parent
    anchor_first, anchor_last = first, last
    while True:
        module = model.get_submodule(path) if path else model
        prefix = f"{path}." if path else ""
        names = [prefix + n for n, _ in module.named_children()]
        i, j = names.index(anchor_first), names.index(anchor_last)
        below = [n for n in names[:i] if _has_params(model.get_submodule(n)) and n not in head] + below  # outer ones run first
        for n in names[j + 1:]:
            if _has_params(model.get_submodule(n)) and not any(n == h or h.startswith(n + ".") for h in head):
                above.append(n)
        if not path:
            break
        anchor_first = anchor_last = path
        path = path.rsplit(".", 1)[0] if "." in path else ""
    return below, above


def top_level_head(model: nn.Module) -> list[str]:
    """The task head: every top-level module with weights except the backbone (`base_model_prefix`, or the
    largest child where the prefix names no child, as in Whisper's `encoder`)."""
    children = {n: _size(m) for n, m in model.named_children()}
    prefix = getattr(model, "base_model_prefix", "")
    backbone = prefix if prefix in children else max(children, key=children.get)
    return [n for n, size in children.items() if n != backbone and size]


def describe(model: nn.Module, family: str, head: list[str], modality: str) -> ModelInfo:
    """A ModelInfo with blocks, embeddings and final found generically."""
    blocks = repeated_blocks(model)
    embeddings, final = around_blocks(model, blocks, head)
    return ModelInfo(family=family, blocks=blocks, head=list(head), final=final, embeddings=embeddings, modality=modality)
