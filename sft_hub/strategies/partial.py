"""`partial`: the last N blocks, the final norm / pooler and the head train; the rest of the base stays frozen.

Blocks come from the task's ModelInfo (BERT `encoder.layer.N`, timm ResNet stages `layerN`, ViT `blocks.N`,
wav2vec2 / AST encoder layers), found from the module tree, never from a list of checkpoints. `n: 0` trains
the head only (exactly as `head`), `n: all` trains everything the task leaves trainable (as `full`, embeddings
included); `n: L` (every block) keeps the embeddings frozen. Frozen BatchNorm stays in eval mode.

What is saved: the trained tensors, plus the buffers (BatchNorm running statistics) of the trained modules,
in one safetensors file `<run>/partial/partial.safetensors`, on top of the fingerprinted base; `load` puts
them back onto a fresh base, and `export --merge` writes the result as one standalone model.
Options shared with `full` (train_top.py): `layer_decay`, `head_lr` and `unfreeze_after`. `cache_frozen` (auto: text
tasks): the frozen blocks run once, in eval mode, and every epoch trains the top on their cached outputs (frozen_cache.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from sft_hub.errors import ConfigError, RunError
from sft_hub.frozen_cache import CacheOptions
from sft_hub.strategies import register
from sft_hub.strategies.base import ModelInfo, keep_frozen_batchnorm_in_eval, options_of, saved_folder
from sft_hub.strategies.train_top import TopTraining, TrainTop

FILE = "partial.safetensors"


@register
class Partial(TopTraining):
    @dataclass
    class Config(TrainTop, CacheOptions):  # + cache_frozen, cache_dir (frozen_cache.py)
        n: int | str = 2  # blocks from the top that train; 0 = head only; "all" = everything

        def validate(self, where: str) -> None:
            if isinstance(self.n, str) and self.n != "all" or isinstance(self.n, int) and self.n < 0:
                raise ConfigError(f"{where}.n: a number of blocks (0 or more) or 'all', got {self.n!r}")
            super().validate(where)

    name: ClassVar[str] = "partial"
    saved_as: ClassVar[str] = "partial"
    merges: ClassVar[bool] = True  # the saved tensors go back into the base: one standalone model
    needs_training_loop: ClassVar[bool] = True

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or self.Config()
        self.trained: list[str] | None = None  # module names that train (None: everything, for n: all)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **options_of(self.config)}

    def modules(self, info: ModelInfo) -> list[str] | None:
        if self.config.n == "all":
            return None
        if self.config.n > len(info.blocks):
            raise ConfigError(f"strategy.n: {self.config.n} blocks, but this {info.family} model has {len(info.blocks)}; "
                              f"use n: all to train everything")
        n = self.config.n
        return info.blocks[len(info.blocks) - n:] + (info.final if n else []) + info.head  # n: 0 is exactly `head`

    def apply(self, model: nn.Module, info: ModelInfo) -> nn.Module:
        self.info, self.trained = info, self.modules(info)
        if self.trained is not None:
            task_trainable = {id(p) for p in model.parameters() if p.requires_grad}  # a task may freeze parts (audio features)
            model.requires_grad_(False)
            for name in self.trained:
                for p in model.get_submodule(name).parameters():
                    p.requires_grad_(id(p) in task_trainable)
        keep_frozen_batchnorm_in_eval(model)
        return model

    def _names(self, model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
        """The trained parameters and the persistent buffers of the trained modules, as keys of `state`."""
        params = {n for n, p in model.named_parameters() if p.requires_grad}
        buffers = {n for n, _ in model.named_buffers()}
        prefixes = [""] if self.trained is None else [m + "." for m in self.trained]
        return [k for k in state if k in params or (k in buffers and any(k.startswith(p) for p in prefixes))]

    def save(self, model: nn.Module, folder: Path, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
        target = Path(folder) / self.saved_as
        target.mkdir(parents=True, exist_ok=True)
        state = model.state_dict() if state_dict is None else state_dict
        save_file({k: state[k].detach().cpu().contiguous() for k in self._names(model, state)}, str(target / FILE))
        return target

    def load(self, base: nn.Module, folder: Path) -> nn.Module:
        file = saved_folder(self, folder) / FILE
        try:
            state = load_file(str(file))
        except Exception as exc:
            raise RunError(f"{file}: cannot read weights: {str(exc).splitlines()[0]}") from None
        known = base.state_dict()
        wrong = [k for k, t in state.items() if k not in known or known[k].shape != t.shape]
        if wrong:
            raise RunError(f"{file}: weights for {wrong[0]} do not fit the base model")
        base.load_state_dict(state, strict=False)
        return base
