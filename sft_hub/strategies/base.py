"""The Strategy protocol, `ModelInfo` (re-exported), and the helpers every strategy shares.

A strategy is one class (no shared state, no implementation inheritance needed) with a typed `Config`
dataclass of its options; `sft_hub.strategies.parse_strategy` validates a recipe's `strategy:` section
into an instance. Optional, outside the protocol: `callbacks(model, resume_from) -> list[TrainerCallback]`
(the engine adds them before its own, e.g. gradual unfreezing, AdaLoRA's rank budget). Freezing helpers
live here so `head`, `partial`, peft methods and `linear_probe` agree on what "frozen" means: frozen BatchNorm layers stay in eval mode, so their running statistics never move
and a saved adapter or head reloads to identical predictions.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol, runtime_checkable

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from sft_hub.errors import RunError
from sft_hub.model_info import ModelInfo  # noqa: F401  (the type strategies read; built by the tasks)

WHOLE_MODEL = "model"  # a strategy saving `<run>/model` writes a complete model folder that loads without its base


@dataclasses.dataclass
class FitInputs:
    """What the engine hands `fit(model, inputs) -> train metrics` of a strategy with `needs_training_loop = False`."""

    task: Any  # the task module (save_processor, ...)
    recipe: Any  # the parsed Recipe (task name, data and model sections)
    data: Any  # TaskData: raw splits (fingerprinted), train split name, labels (None = regression)
    encoded: Any  # DatasetDict, every split encoded with eval preprocessing (no augmentation, no random crops)
    processor: Any
    collate: Callable[[list[dict]], dict]
    info: ModelInfo
    args: Any  # TrainingArguments (seed, per_device_eval_batch_size, dataloader_num_workers, process state)


@runtime_checkable
class Strategy(Protocol):
    name: ClassVar[str]  # the recipe's `strategy.name`
    Config: ClassVar[type]  # dataclass of the options; errors name `strategy.<field>`
    saved_as: ClassVar[str]  # folder under the run dir: "model" | "head" | "adapter" | ...
    merges: ClassVar[bool]  # `export --merge` can fold what was learned into one standalone model
    needs_training_loop: ClassVar[bool]  # False for strategies fitted outside the Trainer (linear_probe)
    config: Any  # the parsed Config instance

    def to_dict(self) -> dict[str, Any]:
        """{"name": ..., **options that differ from their defaults} (what the manifest records)."""
        ...

    def apply(self, model: nn.Module, info: ModelInfo) -> nn.Module:
        """Freeze / wrap `model` for training; returns the model the Trainer trains."""
        ...

    def param_groups(self, model: nn.Module, lr: float) -> list[dict] | None:
        """Optimizer parameter groups (e.g. head_lr, layer_decay); None = the Trainer's default groups."""
        ...

    def save(self, model: nn.Module, folder: Path, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
        """Write what was learned (safetensors only) to `<folder>/<saved_as>`; returns that folder.

        `state_dict`: the model's full state gathered across ranks (FSDP / DeepSpeed), else read from `model`.
        """
        ...

    def load(self, base: nn.Module, folder: Path) -> nn.Module:
        """Put what a run in `folder` learned back onto a freshly built `base`."""
        ...


def options_of(config: Any) -> dict[str, Any]:
    """The fields of a Config dataclass that differ from their defaults, in field order."""
    out = {}
    for f in dataclasses.fields(config):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
        value = getattr(config, f.name)
        if value != default:
            out[f.name] = value
    return out


def option_defaults(config_cls: type) -> list[tuple[str, Any]]:
    """(name, default) for every option of a Config class (the `recipes --strategies` listing)."""
    out = []
    for f in dataclasses.fields(config_cls):
        if f.default is not dataclasses.MISSING:
            out.append((f.name, f.default))
        elif f.default_factory is not dataclasses.MISSING:
            out.append((f.name, f.default_factory()))
        else:
            out.append((f.name, "(required)"))
    return out


def saves_whole_model(strategy: Strategy) -> bool:
    """True when the strategy saves a complete model (`model/`), which loads without the base."""
    return strategy.saved_as == WHOLE_MODEL


def freeze(model: nn.Module, trainable: list[str]) -> None:
    """Freeze every parameter, then unfreeze the named modules."""
    model.requires_grad_(False)
    for name in trainable:
        model.get_submodule(name).requires_grad_(True)


def keep_frozen_batchnorm_in_eval(model: nn.Module) -> None:
    """Frozen BN must not update running stats when Trainer calls model.train(): pin it to eval mode.

    Checked at every forward, not once: a layer that gradual unfreezing (`unfreeze_after`) thaws later trains
    normally from then on, and one frozen for the first epochs keeps its statistics until it is thawed.
    """

    def pin_eval(module: nn.Module, _args: tuple) -> None:
        if not any(p.requires_grad for p in module.parameters(recurse=False)):
            module.training = False

    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and any(True for _ in module.parameters(recurse=False)):
            if not getattr(module, "_sft_hub_pinned", False):  # one hook, however many strategies call this
                module.register_forward_pre_hook(pin_eval)
                module._sft_hub_pinned = True
            if not any(p.requires_grad for p in module.parameters(recurse=False)):
                module.eval()


def frozen_params(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [(n, p) for n, p in model.named_parameters() if not p.requires_grad]


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def count_parameters(model: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}


def save_trainable(model: nn.Module, file: Path, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """The trainable parameters (from a gathered `state_dict` when given) into one safetensors file."""
    file.parent.mkdir(parents=True, exist_ok=True)
    if state_dict is None:
        state = trainable_state(model)
    else:
        names = {n for n, p in model.named_parameters() if p.requires_grad}
        state = {n: t.detach().cpu().contiguous() for n, t in state_dict.items() if n in names}
    save_file(state, str(file))
    return file


def load_into(base: nn.Module, file: Path) -> nn.Module:
    """Load a file of (some of) `base`'s parameters onto it; a name the base lacks is a clear error."""
    try:
        state = load_file(str(file))
    except Exception as exc:
        raise RunError(f"{file}: cannot read weights: {str(exc).splitlines()[0]}") from None
    params = dict(base.named_parameters())
    missing = [k for k in state if k not in params]
    if missing:
        raise RunError(f"{file}: weights for {missing[0]} do not fit the base model")
    base.load_state_dict(state, strict=False)
    return base


def saved_folder(strategy: Strategy, folder: Path) -> Path:
    """`<folder>/<saved_as>`, or a RunError when the run has none."""
    target = Path(folder) / strategy.saved_as
    if not target.is_dir():
        raise RunError(f"{target}: missing; the run has no saved {strategy.saved_as}")
    return target
