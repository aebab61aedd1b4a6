"""The shared engine: recipe -> task data and model -> strategy -> `transformers.Trainer` -> run directory.

One code path for every modality; Accelerate (through Trainer) does devices, DDP/FSDP/DeepSpeed and
mixed precision. The engine computes the loss itself (`compute_loss_func`, summed and divided by the
number of labelled items in the whole accumulated batch), which makes gradient accumulation exact for
every model, including heads that declare `**kwargs` but ignore `num_items_in_batch` (transformers#47688).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import EarlyStoppingCallback, set_seed

from sft_hub import runs
from sft_hub.base_model import files_sha256, tensors_sha256
from sft_hub.callbacks import CompleteCheckpoints, EpochSeeds, FiniteWeights, GracefulStop, MetricsLog, NonFiniteGuard
from sft_hub.checks import check_data, check_model, check_model_source, check_recipe
from sft_hub.config import Recipe
from sft_hub.errors import ConfigError, RunError
from sft_hub.hub import write_model_card
from sft_hub.lock import RunLock
from sft_hub.manifest import build_manifest
from sft_hub.ownership import check_resume_checkpoint, clear_run_dir
from sft_hub.sampling import EngineTrainer
from sft_hub.strategies import apply_strategy, count_parameters, frozen_params, save_learned, trainable_state
from sft_hub.tasks import get_task
from sft_hub.training_args import build_training_args

log = logging.getLogger("sft_hub")


def make_loss(regression: bool, label_smoothing: float = 0.0):
    """Sum of per-example losses over the number of labelled examples in the accumulated batch.

    `label_smoothing` (`training.label_smoothing_factor`) mixes each target with the uniform distribution
    over classes, as Trainer's own LabelSmoother does; the engine's loss replaces Trainer's, so it is
    applied here (hard labels through cross_entropy, soft mixup/cutmix targets by the same mixing).
    """

    def loss_fn(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        count = num_items_in_batch if num_items_in_batch is not None else labels.numel()
        if regression:
            total = F.mse_loss(logits.float().view(-1), labels.float().view(-1), reduction="sum")
        elif labels.is_floating_point() and labels.shape == logits.shape:  # soft targets (mixup / cutmix)
            target = labels.float() * (1 - label_smoothing) + label_smoothing / labels.size(-1)
            total = -(target * F.log_softmax(logits.float(), dim=-1)).sum()
            count = count / labels.size(-1)  # the Trainer counts every element of a [batch, classes] label
        else:
            total = F.cross_entropy(logits.float().view(-1, logits.size(-1)), labels.view(-1), reduction="sum",
                                    label_smoothing=label_smoothing)
        return total / count

    return loss_fn


def train(recipe: Recipe, overwrite: bool = False, resume: bool | str = True) -> dict[str, Any]:
    """Train a recipe into its run directory; returns {"run_dir", "metrics", "manifest", "trainer", "stopped"}.

    Order matters for trust: everything that can make the run meaningless is checked before any model
    loads; the run dir is locked (rank 0, for the whole job) before it is inspected; and nothing is
    written into it (nor an overwritten run deleted) until data, processor, model and strategy are built.
    """
    task = get_task(recipe.task)
    check_recipe(recipe)
    run_dir = recipe.output_dir
    training = dict(recipe.training)
    keep = training.pop("save_total_limit", None)  # rotation is ours: it never deletes the last complete checkpoint
    seed = int(training.get("seed", 42))
    data = task.load_data(recipe.data, seed)  # bad data fails here, before any model is loaded
    check_data(recipe, data)
    check_model_source(recipe)
    args = build_training_args(training, run_dir, remove_unused_columns=False)
    with RunLock(run_dir, "train") if args.should_save else contextlib.nullcontext():
        return _train(recipe, task, data, args, keep, seed, overwrite, resume)


def _train(recipe: Recipe, task, data, args, keep: int | None, seed: int, overwrite: bool, resume: bool | str) -> dict[str, Any]:
    run_dir = recipe.output_dir
    mode = _check_run_dir(recipe, data, args, overwrite, resume)

    processor = task.load_processor(recipe.model)
    with args.main_process_first(desc="preprocessing"):
        encoded = task.encode(data.splits, processor, recipe.data, recipe.model, data.train_split)
    set_seed(seed)  # the new head's initialisation is part of the run: same seed, same head
    built = task.build_model(recipe.model, data.labels)
    check_model(recipe, built.model)
    base = {"files": files_sha256(built.weight_files)} if args.should_save else {}
    with tempfile.TemporaryDirectory(prefix="sft-hub-base-") as tmp:
        if not built.weight_files and recipe.strategy.name != "full" and args.should_save:
            # keep a file-less base with its adapter; saved before the strategy wraps it (peft edits it in place)
            built.model.save_pretrained(Path(tmp) / "base", safe_serialization=True)
            base = {"files": files_sha256((Path(tmp) / "base").glob("*.safetensors")), "saved_in_run": True}
        model = apply_strategy(built.model, recipe.strategy, built.head_modules, task.lora_target_modules)
        checkpoint = _start_run_dir(recipe, data, args, mode, resume)  # the first write into the run dir
        if base.get("saved_in_run"):
            shutil.move(str(Path(tmp) / "base"), run_dir / "base")
            runs.share_like_umask(run_dir / "base")

    frozen_before = tensors_sha256(frozen_params(model)) if recipe.strategy.name != "full" else None
    eval_sets = {name: encoded[name] for name in data.eval_splits}
    smoothing = float(recipe.training.get("label_smoothing_factor") or 0.0)
    guard = NonFiniteGuard(make_loss(data.is_regression, smoothing), recipe.engine.nonfinite_loss, recipe.engine.max_nonfinite_skips)
    stop = GracefulStop()
    collator = task.collator(processor, recipe.data)
    seeded = [t for t in (collator, encoded[data.train_split].format["format_kwargs"].get("transform")) if hasattr(t, "set_epoch")]
    trainer = EngineTrainer(
        model=model,
        args=args,
        train_dataset=encoded[data.train_split],
        eval_dataset=(eval_sets if len(eval_sets) > 1 else next(iter(eval_sets.values()), None)),
        data_collator=collator,
        compute_metrics=task.metrics(recipe.data, data.labels),
        compute_loss_func=guard,
        processing_class=processor if hasattr(processor, "model_input_names") else None,
        callbacks=[CompleteCheckpoints(run_dir, keep, recipe.raw, data.labels), MetricsLog(run_dir / runs.METRICS_LOG), stop,
                   EpochSeeds(seeded, seed), FiniteWeights(model)],
    )
    if recipe.engine.early_stopping_patience:
        trainer.add_callback(EarlyStoppingCallback(recipe.engine.early_stopping_patience, recipe.engine.early_stopping_threshold))
    guard.state = trainer.state
    if checkpoint:
        log.warning("resuming from %s", checkpoint)
    try:
        train_out = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except KeyError as exc:  # Trainer finds a misspelt metric_for_best_model only at the first evaluation
        if "metric_for_best_model" not in str(exc):
            raise
        raise ConfigError(f"training.metric_for_best_model: {str(exc.args[0]).split(' Please', 1)[0]}") from None
    if stop.requested:
        log.warning("stopped by SIGTERM at step %d with a complete checkpoint; run the same command to resume", trainer.state.global_step)
        return {"run_dir": run_dir, "metrics": {}, "manifest": None, "trainer": trainer, "stopped": True}

    if frozen_before is not None and tensors_sha256(frozen_params(model)) != frozen_before:
        raise RunError("frozen base weights changed during training; the run was not saved (report this as a bug)")
    if args.should_save and base.get("files") and not base.get("saved_in_run"):
        if files_sha256(built.weight_files) != base["files"]:
            raise RunError(f"base weight files {', '.join(map(str, built.weight_files))} changed on disk during training")

    trainer.remove_callback(EarlyStoppingCallback)  # the final evaluations below use their own metric names
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
        runs.share_like_umask(run_dir / recipe.strategy.saved_as)
        manifest = build_manifest(recipe, built, base, data, frozen_before, trained_sha, count_parameters(model),
                                  metrics, train_out.metrics, args, task)
        manifest["nonfinite_skipped"] = guard.skipped
        runs.write_json(run_dir / runs.EVAL_RESULTS, metrics)
        write_model_card(run_dir, recipe, manifest)
        runs.write_json(run_dir / runs.MANIFEST, manifest)  # written last: its presence means "finished"
    trainer.accelerator.wait_for_everyone()
    return {"run_dir": run_dir, "metrics": metrics, "manifest": manifest, "trainer": trainer, "stopped": False}


def _check_run_dir(recipe: Recipe, data, args, overwrite: bool, resume: bool | str) -> str:
    """Rank 0 decides what the run dir holds ("new" | "overwrite" | "resume") and checks --resume; writes nothing."""
    run_dir = recipe.output_dir
    if not args.should_save:
        return "new"
    mode = runs.check_output_dir(run_dir, recipe.raw, overwrite)
    labels_file = run_dir / runs.LABELS
    if mode == "resume" and labels_file.is_file():
        before = runs.read_json(labels_file)
        if before != data.labels:
            count = lambda labels: "regression" if labels is None else f"{len(labels)} labels"  # noqa: E731
            raise RunError(f"data: {count(data.labels)} now, but the checkpoints in {run_dir} were trained with "
                           f"{count(before)} ({before}); pass --overwrite to start again")
    if isinstance(resume, str):
        check_resume_checkpoint(Path(resume), recipe.raw, data.labels)
    return mode


def _start_run_dir(recipe: Recipe, data, args, mode: str, resume: bool | str) -> Path | None:
    """Rank 0 clears an overwritten run, writes recipe and labels, picks the checkpoint; every rank gets it."""
    run_dir = recipe.output_dir
    decision: list[Any] = [None]
    if args.should_save:
        if mode == "overwrite":
            clear_run_dir(run_dir)
        runs.write_recipe(run_dir, recipe.raw)
        runs.write_json(run_dir / runs.LABELS, data.labels)
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
