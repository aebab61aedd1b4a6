"""The shared engine: recipe -> task data and model -> strategy -> `transformers.Trainer` -> run directory.

One code path for every modality; Accelerate (through Trainer) does devices, DDP/FSDP/DeepSpeed and
mixed precision. The engine computes the loss itself (`compute_loss_func`, summed and divided by the
number of labelled items in the whole accumulated batch), which makes gradient accumulation exact for
every model, including heads that declare `**kwargs` but ignore `num_items_in_batch` (transformers#47688).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback, set_seed

from sft_hub import runs
from sft_hub.base_model import files_sha256, tensors_sha256
from sft_hub.config import Recipe
from sft_hub.errors import RunError
from sft_hub.manifest import build_manifest
from sft_hub.strategies import apply_strategy, count_parameters, frozen_params, save_learned, trainable_state
from sft_hub.tasks import get_task
from sft_hub.training_args import build_training_args

log = logging.getLogger("sft_hub")


def make_loss(regression: bool):
    """Sum of per-example losses over the number of labelled examples in the accumulated batch."""

    def loss_fn(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        if regression:
            total = F.mse_loss(logits.float().view(-1), labels.float().view(-1), reduction="sum")
        else:
            total = F.cross_entropy(logits.float().view(-1, logits.size(-1)), labels.view(-1), reduction="sum")
        count = num_items_in_batch if num_items_in_batch is not None else labels.numel()
        return total / count

    return loss_fn


class CompleteCheckpoints(TrainerCallback):
    """Marks a checkpoint complete after Trainer has written it, then rotates (complete ones only)."""

    def __init__(self, run_dir: Path, keep: int | None):
        self.run_dir, self.keep = run_dir, keep

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            ckpt = self.run_dir / "checkpoints" / f"checkpoint-{state.global_step}"
            if ckpt.is_dir():
                runs.mark_complete(ckpt)
                runs.rotate(self.run_dir, self.keep)


class MetricsLog(TrainerCallback):
    """Appends every log record (loss, grad_norm, learning rate, eval metrics) to <run>/metrics.jsonl."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            import json

            with open(self.path, "a") as fh:
                fh.write(json.dumps({"step": state.global_step, **logs}) + "\n")


def train(recipe: Recipe, overwrite: bool = False, resume: bool | str = True) -> dict[str, Any]:
    """Train a recipe into its run directory; returns {"run_dir", "metrics", "manifest"}."""
    task = get_task(recipe.task)
    run_dir = recipe.output_dir
    training = dict(recipe.training)
    keep = training.pop("save_total_limit", None)  # rotation is ours: it never deletes the last complete checkpoint
    seed = int(training.get("seed", 42))
    data = task.load_data(recipe.data, seed)  # bad data fails here, before any model is loaded
    args = build_training_args(training, run_dir, remove_unused_columns=False)

    decision: list[Any] = [None]
    if args.should_save:  # rank 0 decides about the folder; every rank resumes from the same checkpoint
        mode = runs.check_output_dir(run_dir, recipe.raw, overwrite)
        runs.write_recipe(run_dir, recipe.raw)
        decision = [_resume_from(run_dir, resume) if mode == "resume" or isinstance(resume, str) else None]
    if args.world_size > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(decision)
    checkpoint = decision[0]

    processor = task.load_processor(recipe.model)
    with args.main_process_first(desc="preprocessing"):
        encoded = task.encode(data.splits, processor, recipe.data, recipe.model, data.train_split)
    set_seed(seed)  # the new head's initialisation is part of the run: same seed, same head
    built = task.build_model(recipe.model, data.labels)
    base = {"files": files_sha256(built.weight_files)} if args.should_save else {}
    if not built.weight_files and recipe.strategy.name != "full" and args.should_save:
        built.model.save_pretrained(run_dir / "base", safe_serialization=True)  # keep a file-less base with its adapter
        base = {"files": files_sha256((run_dir / "base").glob("*.safetensors")), "saved_in_run": True}

    model = apply_strategy(built.model, recipe.strategy, built.head_modules, task.lora_target_modules)
    frozen_before = tensors_sha256(frozen_params(model)) if recipe.strategy.name != "full" else None
    eval_sets = {name: encoded[name] for name in data.eval_splits}
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=encoded[data.train_split],
        eval_dataset=(eval_sets if len(eval_sets) > 1 else next(iter(eval_sets.values()), None)),
        data_collator=task.collator(processor, recipe.data),
        compute_metrics=task.metrics(recipe.data, data.labels),
        compute_loss_func=make_loss(data.is_regression),
        processing_class=processor if hasattr(processor, "model_input_names") else None,
        callbacks=[CompleteCheckpoints(run_dir, keep), MetricsLog(run_dir / runs.METRICS_LOG)],
    )
    if checkpoint:
        log.warning("resuming from %s", checkpoint)
    train_out = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)

    if frozen_before is not None and tensors_sha256(frozen_params(model)) != frozen_before:
        raise RunError("frozen base weights changed during training; the run was not saved (report this as a bug)")
    if args.should_save and base.get("files") and not base.get("saved_in_run"):
        if files_sha256(built.weight_files) != base["files"]:
            raise RunError(f"base weight files {', '.join(map(str, built.weight_files))} changed on disk during training")

    metrics = {name: trainer.evaluate(eval_dataset=ds, metric_key_prefix=f"eval_{name}") for name, ds in eval_sets.items()}
    trained_sha = tensors_sha256(trainable_state(trainer.accelerator.unwrap_model(trainer.model)).items())
    log.warning("rank %d: trained weights sha256 %s", args.process_index, trained_sha)

    trainer.processing_class = None  # the processor is saved once, in <run>/processor, not inside the adapter
    if recipe.strategy.name == "head":
        if args.should_save:
            save_learned(trainer.accelerator.unwrap_model(trainer.model), recipe.strategy, run_dir)
    else:
        trainer.save_model(str(run_dir / recipe.strategy.saved_as))  # gathers FSDP/DeepSpeed shards; rank 0 writes
    manifest = None
    if args.should_save:
        task.save_processor(processor, run_dir / "processor")
        (run_dir / recipe.strategy.saved_as / "training_args.bin").unlink(missing_ok=True)
        manifest = build_manifest(recipe, built, base, data, frozen_before, trained_sha, count_parameters(model),
                                  metrics, train_out.metrics, args, task)
        runs.write_json(run_dir / runs.EVAL_RESULTS, metrics)
        from sft_hub.hub import write_model_card

        write_model_card(run_dir, recipe, manifest)
        runs.write_json(run_dir / runs.MANIFEST, manifest)  # written last: its presence means "finished"
    trainer.accelerator.wait_for_everyone()
    return {"run_dir": run_dir, "metrics": metrics, "manifest": manifest, "trainer": trainer}


def _resume_from(run_dir: Path, resume: bool | str) -> Path | None:
    if isinstance(resume, str):
        path = Path(resume)
        if not (path / runs.COMPLETE).is_file():
            raise RunError(f"--resume {path}: not a complete checkpoint (no {runs.COMPLETE} marker)")
        return path
    if not resume:
        return None
    for step, path, ok in runs.checkpoints(run_dir):
        if not ok:
            log.warning("ignoring incomplete checkpoint %s (no %s marker)", path, runs.COMPLETE)
    return runs.latest_complete_checkpoint(run_dir)
