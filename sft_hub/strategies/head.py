"""`head`: the backbone is frozen, only the task's new head trains; the head's weights are saved (`<run>/head`).

With `cache_frozen` (auto: text tasks) the backbone runs once, in eval mode, and every epoch trains the head on its
cached outputs (sft_hub/frozen_cache.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from sft_hub.frozen_cache import CacheOptions
from sft_hub.strategies import register
from sft_hub.strategies.base import ModelInfo, freeze, keep_frozen_batchnorm_in_eval, load_into, options_of, save_trainable, saved_folder

HEAD_FILE = "head.safetensors"


class HeadWeights:
    """Only the new head learns and is saved (`<run>/head/head.safetensors`): `head` and `linear_probe` share this."""

    Config: ClassVar[type]
    name: ClassVar[str]
    saved_as: ClassVar[str] = "head"
    merges: ClassVar[bool] = True  # the head file goes back into the model's own classifier

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or self.Config()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **options_of(self.config)}

    def apply(self, model: nn.Module, info: ModelInfo) -> nn.Module:
        freeze(model, info.head)  # the head counts as trainable (and is what `save` writes); nothing else moves
        keep_frozen_batchnorm_in_eval(model)
        return model

    def param_groups(self, model: nn.Module, lr: float) -> list[dict] | None:
        return None

    def save(self, model: nn.Module, folder: Path, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
        target = Path(folder) / self.saved_as
        save_trainable(model, target / HEAD_FILE, state_dict)
        return target

    def load(self, base: nn.Module, folder: Path) -> nn.Module:
        return load_into(base, saved_folder(self, folder) / HEAD_FILE)


@register
class Head(HeadWeights):
    @dataclass
    class Config(CacheOptions):  # cache_frozen, cache_dir: the backbone's outputs computed once (frozen_cache.py)
        pass

    name: ClassVar[str] = "head"
    needs_training_loop: ClassVar[bool] = True
