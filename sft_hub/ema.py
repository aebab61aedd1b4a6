"""EMA of weights (`engine.ema`): timm's `ModelEmaV3` over what the run trains, evaluated and saved instead of the raw weights.

The average covers the trainable parameters and the buffers (BatchNorm statistics), not the frozen base:
frozen tensors never change, so their average would be the tensor itself at the cost of a second copy
of the base. `ModelEmaV3` averages a small module whose buffers *are* those live tensors (`_Tracked`),
so it copies only them. The average is updated after every optimizer step (`on_step_end`) with timm's
step-based decay (the first update copies the weights), written into each checkpoint as `ema.safetensors`
before the checkpoint is marked complete, and read back on resume: the resumed average is bit-identical
to an uninterrupted one (tests/reliability/test_resume.py). Every evaluation during training runs on the
averaged weights (swapped in, then the raw ones put back), and at the end `use_average` copies the average
into the model, so the final metrics, the saved adapter/head/model and its reload all agree.
FSDP and DeepSpeed shard the weights (no whole tensor on a rank to average) and are refused.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import TrainerCallback

from sft_hub.errors import ConfigError, RunError

EMA_FILE = "ema.safetensors"


@dataclass
class EmaConfig:
    decay: float = 0.999  # weight of the old average per optimizer step
    warmup: bool = False  # timm's decay warmup: 1 - (1 + step) ** -warmup_power, capped at `decay`
    warmup_power: float = 0.75

    def validate(self, where: str) -> None:
        if not 0 < self.decay < 1:
            raise ConfigError(f"{where}.decay: must be between 0 and 1, got {self.decay}")
        if self.warmup_power <= 0:
            raise ConfigError(f"{where}.warmup_power: must be > 0, got {self.warmup_power}")


class _Tracked(nn.Module):
    """A view of the tensors that training changes, as buffers sharing their storage (no copy)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        state, buffers, seen = model.state_dict(keep_vars=True), dict(model.named_buffers()), set()
        self.names = []
        for name, tensor in state.items():  # tied tensors once: averaging one storage twice would double its update
            if (name in trainable or name in buffers) and tensor.data_ptr() not in seen:
                seen.add(tensor.data_ptr())
                self.names.append(name)
        for i, name in enumerate(self.names):
            self.register_buffer(f"t{i}", state[name].detach())
        if not self.names:
            raise ConfigError("engine.ema: the model has nothing trainable to average")
        # ModelEmaV3 reads its device from a parameter: an empty one, on the tracked tensors' device
        self.anchor = nn.Parameter(torch.empty(0, device=state[self.names[0]].device), requires_grad=False)

    def tensors(self) -> list[torch.Tensor]:
        return [getattr(self, f"t{i}") for i in range(len(self.names))]


class WeightEma(TrainerCallback):
    """Keeps the average during training; `attach` hooks it into a Trainer, `use_average` ends it."""

    def __init__(self, config: EmaConfig, resume_from: Path | None = None):
        self.config, self.resume_from = config, resume_from
        self.trainer = None
        self.view: _Tracked | None = None
        self.ema: Any = None  # timm's ModelEmaV3 once training begins
        self.final = False

    def attach(self, trainer) -> None:
        if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
            raise ConfigError("engine.ema: not supported with FSDP or DeepSpeed (sharded weights); use DDP or one device")
        self.trainer = trainer
        evaluate = trainer.evaluate

        def evaluate_average(*args, **kwargs):
            with self.swapped():
                return evaluate(*args, **kwargs)

        trainer.evaluate = evaluate_average  # every evaluation (during training and after) sees the average

    def on_train_begin(self, args, state, control, **kwargs):
        # after Trainer loaded a resumed checkpoint's weights: the view sees the weights training starts from
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        from timm.utils import ModelEmaV3  # here, not at module level: a text run without EMA never loads timm (~22 MB)

        self.view = _Tracked(model)
        self.ema = ModelEmaV3(self.view, decay=self.config.decay, use_warmup=self.config.warmup,
                              warmup_power=self.config.warmup_power)
        if self.resume_from is not None:
            self._load(self.resume_from / EMA_FILE)

    def on_step_end(self, args, state, control, **kwargs):
        self.ema.update(self.view, step=state.global_step)

    def on_save(self, args, state, control, **kwargs):
        if args.should_save:  # before CompleteCheckpoints marks the folder complete (callback order)
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            tensors = {name: t.detach().cpu().contiguous() for name, t in zip(self.view.names, self._averaged())}
            save_file(tensors, str(folder / EMA_FILE))

    def _averaged(self) -> list[torch.Tensor]:
        return self.ema.module.tensors()

    def _load(self, path: Path) -> None:
        if not path.is_file():
            raise RunError(f"{path.parent}: no {EMA_FILE} (was it trained without engine.ema?); cannot resume the weight average")
        saved = load_file(str(path))
        if sorted(saved) != sorted(self.view.names):
            raise RunError(f"{path}: holds the average of other weights than this run trains")
        with torch.no_grad():
            for name, target in zip(self.view.names, self._averaged()):
                target.copy_(saved[name].to(target.device))

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """The averaged weights in the model for the duration (the raw ones put back after)."""
        if self.ema is None or self.final:
            yield
            return
        live = self.view.tensors()
        raw = [t.clone() for t in live]
        with torch.no_grad():
            for t, avg in zip(live, self._averaged()):
                t.copy_(avg)
        try:
            yield
        finally:
            with torch.no_grad():
                for t, r in zip(live, raw):
                    t.copy_(r)

    @torch.no_grad()
    def use_average(self) -> None:
        """Training is over: the model keeps the averaged weights (what is evaluated and saved)."""
        if self.ema is None:  # no step was taken (e.g. resumed at max_steps): nothing averaged
            return
        for t, avg in zip(self.view.tensors(), self._averaged()):
            t.copy_(avg)
        self.final = True
