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
from datasets import IterableDataset
from safetensors.torch import save_file
from transformers import set_seed

from sft_hub import distributed, runs, streaming
from sft_hub.base_model import files_sha256
from sft_hub.callbacks import CompleteCheckpoints, EpochSeeds, GracefulStop, MetricsLog, NonFiniteGuard
from sft_hub.config import Recipe
from sft_hub.errors import RunError
from sft_hub.hub import write_model_card
from sft_hub.manifest import build_manifest
from sft_hub.sampling import EngineTrainer
from sft_hub.strategies import HEAD_FILE, apply_strategy, frozen_params
from sft_hub.tasks import get_task
from sft_hub.training_args import build_training_args

log = logging.getLogger("sft_hub")


def make_loss(regression: bool):
    """Sum of per-example losses over the number of labelled examples in the accumulated batch."""

    def loss_fn(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        count = num_items_in_batch if num_items_in_batch is not None else labels.numel()
        if regression:
            total = F.mse_loss(logits.float().view(-1), labels.float().view(-1), reduction="sum")
        elif labels.is_floating_point() and labels.shape == logits.shape:  # soft targets (mixup / cutmix)
            total = -(labels.float() * F.log_softmax(logits.float(), dim=-1)).sum()
            count = count / labels.size(-1)  # the Trainer counts every element of a [batch, classes] label
        else:
            total = F.cross_entropy(logits.float().view(-1, logits.size(-1)), labels.view(-1), reduction="sum")
        return total / count

    return loss_fn


def train(recipe: Recipe, overwrite: bool = False, resume: bool | str = True) -> dict[str, Any]:
    """Train a recipe into its run directory; returns {"run_dir", "metrics", "manifest", "trainer", "stopped"}."""
    task = get_task(recipe.task)
    run_dir = recipe.output_dir
    training = dict(recipe.training)
    keep = training.pop("save_total_limit", None)  # rotation is ours: it never deletes the last complete checkpoint
    seed = int(training.get("seed", 42))
    data = task.load_data(recipe.data, seed)  # bad data fails here, before any model is loaded
    streamed = isinstance(data.splits[data.train_split], IterableDataset)
    if streamed:  # positions are restored from the checkpoint, not re-read; they live in this process
        streaming.check_training(training)
        training.update(ignore_data_skip=True, dataloader_num_workers=0)
    args = build_training_args(training, run_dir, remove_unused_columns=False)
    checkpoint = _prepare_run_dir(recipe, data, args, overwrite, resume)

    processor = task.load_processor(recipe.model)
    with args.main_process_first(desc="preprocessing"):
        encoded = task.encode(data.splits, processor, recipe.data, recipe.model, data.train_split)
    set_seed(seed)  # the new head's initialisation is part of the run: same seed, same head
    built = task.build_model(recipe.model, data.labels)
    base = {"files": files_sha256(built.weight_files)} if args.should_save else {}
    if not built.weight_files and recipe.strategy.name != "full" and args.should_save:
        built.model.save_pretrained(run_dir / "base", safe_serialization=True)  # keep a file-less base with its adapter
        runs.share_like_umask(run_dir / "base")
        base = {"files": files_sha256((run_dir / "base").glob("*.safetensors")), "saved_in_run": True}

    model = apply_strategy(built.model, recipe.strategy, built.head_modules, task.lora_target_modules)
    # With FSDP's RAM-efficient loading only rank 0 holds the base here (the others hold `meta` copies
    # until FSDP broadcasts rank 0's weights): rank 0's fingerprint is the run's, the others get None.
    frozen_before = distributed.fingerprint(frozen_params(model)) if recipe.strategy.name != "full" else None
    eval_sets = {name: encoded[name] for name in data.eval_splits}
    guard = NonFiniteGuard(make_loss(data.is_regression), recipe.engine.nonfinite_loss, recipe.engine.max_nonfinite_skips)
    stop = GracefulStop()
    collator = task.collator(processor, recipe.data)
    train_set = encoded[data.train_split]
    seeded = [t for t in (collator, getattr(train_set, "format", {}).get("format_kwargs", {}).get("transform")) if hasattr(t, "set_epoch")]
    callbacks = [CompleteCheckpoints(run_dir, keep), MetricsLog(run_dir / runs.METRICS_LOG), stop, EpochSeeds(seeded, seed)]
    if streamed:
        train_set = streaming.TrainStream(train_set, args.process_index, args.world_size)
        if checkpoint:
            train_set.restore(checkpoint)
        callbacks.insert(0, streaming.StreamPosition(train_set, run_dir))  # written before the checkpoint is marked complete
    trainer = EngineTrainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=(eval_sets if len(eval_sets) > 1 else next(iter(eval_sets.values()), None)),
        data_collator=collator,
        compute_metrics=task.metrics(recipe.data, data.labels),
        compute_loss_func=guard,
        processing_class=processor if hasattr(processor, "model_input_names") else None,
        callbacks=callbacks,
    )
    guard.state = trainer.state
    distributed.prepare_fsdp(trainer.accelerator, model)
    if checkpoint:
        log.warning("resuming from %s", checkpoint)
    train_out = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if stop.requested:
        log.warning("stopped by SIGTERM at step %d with a complete checkpoint; run the same command to resume", trainer.state.global_step)
        return {"run_dir": run_dir, "metrics": {}, "manifest": None, "trainer": trainer, "stopped": True}

    if recipe.strategy.name != "full":  # every rank gathers (a collective under FSDP / ZeRO-3); rank 0 judges
        frozen_after = distributed.fingerprint(frozen_params(model))
        if distributed.from_main(frozen_before is not None and frozen_after != frozen_before):
            raise RunError("frozen base weights changed during training; the run was not saved (report this as a bug)")
    if args.should_save and base.get("files") and not base.get("saved_in_run"):
        if files_sha256(built.weight_files) != base["files"]:
            raise RunError(f"base weight files {', '.join(map(str, built.weight_files))} changed on disk during training")

    metrics = {name: trainer.evaluate(eval_dataset=ds, metric_key_prefix=f"eval_{name}") for name, ds in eval_sets.items()}
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    trainable = [(n, p) for n, p in unwrapped.named_parameters() if p.requires_grad]
    trained_sha = distributed.fingerprint(trainable)  # of the gathered weights: equal on every rank
    log.warning("rank %d: trained weights sha256 %s", args.process_index, trained_sha)

    trainer.processing_class = None  # the processor is saved once, in <run>/processor, not inside the adapter
    if recipe.strategy.name == "head":  # the gathered head, not this rank's shard of it
        head = distributed.full_tensors(trainable)
        if args.should_save:
            (run_dir / recipe.strategy.saved_as).mkdir(parents=True, exist_ok=True)
            save_file(head, str(run_dir / recipe.strategy.saved_as / HEAD_FILE))
    else:
        distributed.gather_final_save(trainer.accelerator)
        trainer.save_model(str(run_dir / recipe.strategy.saved_as))  # gathers FSDP/DeepSpeed shards; rank 0 writes
    manifest = None
    if args.should_save:
        task.save_processor(processor, run_dir / "processor")
        (run_dir / recipe.strategy.saved_as / "training_args.bin").unlink(missing_ok=True)
        runs.share_like_umask(run_dir / recipe.strategy.saved_as)
        manifest = build_manifest(recipe, built, base, data, frozen_before, trained_sha, distributed.parameter_counts(model),
                                  metrics, train_out.metrics, args, task)
        manifest["nonfinite_skipped"] = guard.skipped
        runs.write_json(run_dir / runs.EVAL_RESULTS, metrics)
        write_model_card(run_dir, recipe, manifest)
        runs.write_json(run_dir / runs.MANIFEST, manifest)  # written last: its presence means "finished"
    trainer.accelerator.wait_for_everyone()
    return {"run_dir": run_dir, "metrics": metrics, "manifest": manifest, "trainer": trainer, "stopped": False}


def _prepare_run_dir(recipe: Recipe, data, args, overwrite: bool, resume: bool | str) -> Path | None:
    """Rank 0 checks the output dir and picks the checkpoint to resume; every rank gets the same answer."""
    run_dir = recipe.output_dir
    decision: list[Any] = [None]
    if args.should_save:
        mode = runs.check_output_dir(run_dir, recipe.raw, overwrite)
        labels_file = run_dir / runs.LABELS
        if mode == "resume" and labels_file.is_file():
            before = runs.read_json(labels_file)
            if before != data.labels:
                count = lambda labels: "regression" if labels is None else f"{len(labels)} labels"  # noqa: E731
                raise RunError(f"data: {count(data.labels)} now, but the checkpoints in {run_dir} were trained with "
                               f"{count(before)} ({before}); pass --overwrite to start again")
        runs.write_recipe(run_dir, recipe.raw)
        runs.write_json(labels_file, data.labels)
        decision = [_resume_from(run_dir, resume) if mode == "resume" or isinstance(resume, str) else None]
    if args.world_size > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(decision)
    return decision[0]


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
