"""AdaLoRA's rank budget under the Trainer, with exact resume.

AdaLoRA only reallocates ranks when the training loop calls `update_and_allocate(step)` after each optimizer
step (before the gradients are cleared); Trainer does not, so `AdaLoraBudget` does it in `on_optimizer_step`.
`total_step` (required by peft) defaults to the run's own number of optimizer steps, set at train start.

Resume: the allocator's importance averages (`ipt`, `exp_avg_ipt`, `exp_avg_unc`) live outside the model and
the optimizer, so they are written into each checkpoint (`adalora_budget.safetensors`, with the rank pattern)
and read back on resume. The rank pattern is kept out of the adapter config while training: with it set, peft
saves checkpoints already shrunk to the pattern, which the full-size model being trained cannot load again.
The masked ranks are zeros in the full-size weights, so nothing is lost; at the end of training the pattern is
put back and the final adapter is saved shrunk, as peft does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from transformers import TrainerCallback

from sft_hub.errors import ConfigError, RunError

STATE_FILE = "adalora_budget.safetensors"
AVERAGES = ("ipt", "exp_avg_ipt", "exp_avg_unc")


class AdaLoraBudget(TrainerCallback):
    def __init__(self, model: Any, total_step_given: bool, resume_from: Path | None):
        self.model, self.total_step_given, self.resume_from = model, total_step_given, resume_from
        self.rank_pattern: dict | None = None

    @property
    def config(self) -> Any:
        return self.model.peft_config[self.model.base_model.trainable_adapter_name]

    @property
    def allocator(self) -> Any:
        return self.model.base_model.rankallocator

    def on_train_begin(self, args, state, control, **kwargs):
        cfg = self.config
        if not self.total_step_given:
            cfg.total_step = state.max_steps
        if cfg.tinit >= cfg.total_step - cfg.tfinal:
            raise ConfigError(f"strategy.tinit: tinit ({cfg.tinit}) + tfinal ({cfg.tfinal}) leave no steps for AdaLoRA's "
                              f"budgeting phase in a run of {cfg.total_step} steps")
        self.rank_pattern, cfg.rank_pattern = cfg.rank_pattern, None
        if self.resume_from is not None and state.global_step > 0:
            self._load(Path(self.resume_from) / STATE_FILE)

    def on_optimizer_step(self, args, state, control, **kwargs):
        cfg = self.config
        cfg.rank_pattern = self.rank_pattern
        self.model.base_model.update_and_allocate(state.global_step)  # steps done before this one, as peft's loop counts
        self.rank_pattern, cfg.rank_pattern = cfg.rank_pattern, None

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                tensors = {f"{kind}/{name}": t.detach().cpu().contiguous()
                           for kind in AVERAGES for name, t in getattr(self.allocator, kind).items()}
                save_file(tensors, str(folder / STATE_FILE), metadata={"rank_pattern": json.dumps(self.rank_pattern)})

    def on_train_end(self, args, state, control, **kwargs):
        self.config.rank_pattern = self.rank_pattern  # the final adapter is saved shrunk to its ranks

    def _load(self, file: Path) -> None:
        if not file.is_file():
            raise RunError(f"{file.parent}: no {STATE_FILE}; AdaLoRA cannot resume its rank budget exactly from this checkpoint")
        from safetensors import safe_open

        with safe_open(str(file), "pt") as fh:
            self.rank_pattern = json.loads((fh.metadata() or {}).get("rank_pattern", "null"))
        device = next(self.model.parameters()).device
        for kind in AVERAGES:
            getattr(self.allocator, kind).clear()
        for key, tensor in load_file(str(file)).items():
            kind, name = key.split("/", 1)
            getattr(self.allocator, kind)[name] = tensor.to(device)
