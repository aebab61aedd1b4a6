"""The shared engine: recipe -> task data and model -> strategy -> `transformers.Trainer` -> run directory.

One code path for every modality; Accelerate (through Trainer) does devices, DDP/FSDP/DeepSpeed and
mixed precision. The engine computes the loss itself (`compute_loss_func`, summed and divided by the
number of labelled items in the whole accumulated batch), which makes gradient accumulation exact for
every model, including heads that declare `**kwargs` but ignore `num_items_in_batch` (transformers#47688).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from datasets import IterableDataset
from transformers import EarlyStoppingCallback, set_seed

from sft_hub import console, controls, cpu_sharding, distributed, fast_dropout, runs, streaming
from sft_hub.base_model import SAVED_BASE, files_sha256
from sft_hub.callbacks import CompleteCheckpoints, EpochSeeds, FiniteWeights, GracefulStop, MetricsLog, NonFiniteGuard
from sft_hub.card import write_model_card
from sft_hub.checks import check_data, check_model, check_model_source, check_recipe
from sft_hub.config import Recipe
from sft_hub.ema import WeightEma
from sft_hub.errors import ConfigError, RunError
from sft_hub.frozen_cache import prepare as prepare_frozen_cache
from sft_hub.lock import RunLock
from sft_hub.losses import make_loss
from sft_hub.manifest import build_manifest
from sft_hub.ownership import check_resume_checkpoint, clear_run_dir
from sft_hub.report import build as report
from sft_hub.report.tensorboard import route as route_tensorboard
from sft_hub.resources import PeakMemory
from sft_hub.runs import Run
from sft_hub.sampling import EngineTrainer
from sft_hub.strategies import FitInputs, frozen_params, saves_whole_model
from sft_hub.tasks import get_task
from sft_hub.training_args import build_training_args

CHECK_ROWS = 8  # eval inputs stored in the run for export's check (a run dir then needs no training data)

log = logging.getLogger("sft_hub")


def strategy_callbacks(strategy: Any, model: torch.nn.Module, checkpoint: Path | None) -> list:
    """A strategy's Trainer callbacks (optional `callbacks(model, resume_from)`: gradual unfreezing, AdaLoRA's budget)."""
    make = getattr(strategy, "callbacks", None)
    return list(make(model, checkpoint)) if make is not None else []


def _processor(task: Any, recipe: Recipe, data: Any) -> Any:
    """The task's processor; a task whose vocabulary comes from the data (speech recognition) builds it from the labels."""
    if hasattr(task, "build_processor"):
        return task.build_processor(recipe.model, recipe.data, data.labels)
    return task.load_processor(recipe.model)


def _loss(task: Any, recipe: Recipe, data: Any, weights: list[float] | None):
    """The engine's loss (losses.py: classification, multi-label, regression; class weights, label smoothing),
    or the task's own (speech recognition: CTC, see tasks/ctc.py)."""
    if hasattr(task, "make_loss"):
        return task.make_loss(recipe.model, recipe.data)
    return make_loss(controls.loss_kind(data), weights, float(recipe.training.get("label_smoothing_factor") or 0.0))


def train(recipe: Recipe, overwrite: bool = False, resume: bool | str = True, callbacks: list | None = None) -> dict[str, Any]:
    """Train a recipe into its run directory; returns {"run_dir", "metrics", "manifest", "trainer", "stopped"}.

    Order matters for trust: everything that can make the run meaningless is checked before any model
    loads; the run dir is locked (rank 0, for the whole job) before it is inspected; and nothing is
    written into it (nor an overwritten run deleted) until data, processor, model and strategy are built.
    `callbacks`: extra TrainerCallbacks (e.g. `sft-hub select`'s time budget).
    """
    task = get_task(recipe.task)
    check_recipe(recipe)
    cpu_sharding.install()  # an FSDP / DeepSpeed launch on CPU processes runs as such, not as DDP
    training = dict(recipe.training)
    keep = training.pop("save_total_limit", None)  # rotation is ours: it never deletes the last complete checkpoint
    seed = int(training.get("seed", 42))
    data = task.load_data(recipe.data, seed)  # bad data fails here, before any model is loaded
    check_data(recipe, data)
    check_model_source(recipe)
    if isinstance(data.splits[data.train_split], IterableDataset):
        streaming.check_recipe(training, recipe.strategy)
        # positions are restored from the checkpoint, not re-read; they live in this process
        training.update(ignore_data_skip=True, dataloader_num_workers=0)
    args = build_training_args(training, recipe.output_dir, remove_unused_columns=False)
    with RunLock(recipe.output_dir, "train") if args.should_save else contextlib.nullcontext():
        return _train(recipe, task, data, args, keep, seed, overwrite, resume, callbacks)


def _train(recipe: Recipe, task, data, args, keep: int | None, seed: int, overwrite: bool, resume: bool | str,
           callbacks: list | None = None) -> dict[str, Any]:
    strategy = recipe.strategy
    run = Run.create(recipe)
    run_dir = run.run_dir
    mode = _check_run_dir(run, recipe, data, args, overwrite, resume)

    processor = _processor(task, recipe, data)
    with args.main_process_first(desc="preprocessing"), console.data_bars():
        # a strategy fitted without a training loop (linear_probe) sees the training rows as eval does: no augmentation
        encoded = task.encode(data.splits, processor, recipe.data, recipe.model, data.train_split if strategy.needs_training_loop else None)
    set_seed(seed)  # the new head's initialisation is part of the run: same seed, same head
    built = task.build_model(recipe.model, data.labels)
    check_model(recipe, built.model)
    if data.multi_label:  # sigmoid outputs: what pipelines and the Hub read from config.json
        built.model.config.problem_type = "multi_label_classification"
    base_ref, base_files = built.base, files_sha256(built.weight_files) if args.should_save else {}
    with tempfile.TemporaryDirectory(prefix="sft-hub-base-") as tmp:
        keep_base = not built.weight_files and not saves_whole_model(strategy) and args.should_save
        if keep_base:  # a file-less base goes with its adapter; saved before the strategy wraps it (peft edits in place)
            built.model.save_pretrained(Path(tmp) / SAVED_BASE, safe_serialization=True)
            base_ref, base_files = built.base.saved_in_run(), files_sha256((Path(tmp) / SAVED_BASE).glob("*.safetensors"))
        model = strategy.apply(built.model, built.info)
        fast_dropout.install(model)  # CPU float32 training: torch's dropout draws, bit for bit, from a compiled kernel
        checkpoint = _start_run_dir(run, recipe, data, args, mode, resume)  # the first write into the run dir
        if keep_base:
            shutil.move(str(Path(tmp) / SAVED_BASE), run_dir / SAVED_BASE)
            run.share(SAVED_BASE)

    # With FSDP's RAM-efficient loading only rank 0 holds the base here (the others hold `meta` copies until
    # FSDP broadcasts rank 0's weights inside prepare): rank 0's fingerprint is the run's, the others get None.
    frozen = frozen_params(model)
    check_frozen = bool(frozen) and not saves_whole_model(strategy)
    frozen_before = distributed.fingerprint(frozen) if check_frozen else None
    eval_sets = {name: encoded[name] for name in data.eval_splits}
    weights = controls.class_weights(recipe.data, data)
    guard = NonFiniteGuard(_loss(task, recipe, data, weights), recipe.engine.nonfinite_loss, recipe.engine.max_nonfinite_skips)
    ema = WeightEma(recipe.engine.ema, checkpoint) if recipe.engine.ema is not None else None
    compute_metrics = task.metrics(recipe.data, data.labels)
    stop = GracefulStop()
    collator = task.collator(processor, recipe.data)
    fit_inputs = FitInputs(task, recipe, data, encoded, processor, collator, built.info, args)
    # head / partial on a frozen bottom: its outputs computed once, the top trained on them (frozen_cache.py)
    train_set, train_collator, frozen_cache = prepare_frozen_cache(strategy, model, built.info, fit_inputs, args)
    transform = getattr(encoded[data.train_split], "format", {}).get("format_kwargs", {}).get("transform")
    seeded = [t for t in (collator, transform) if hasattr(t, "set_epoch")]
    train_set, stream_callbacks = streaming.attach(train_set, args, checkpoint, run_dir)  # a streamed split: this rank's part
    trainer = EngineTrainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=(eval_sets if len(eval_sets) > 1 else next(iter(eval_sets.values()), None)),
        data_collator=train_collator,
        compute_metrics=compute_metrics,
        compute_loss_func=guard,
        param_groups=strategy.param_groups,
        preprocess_logits_for_metrics=getattr(task, "preprocess_logits_for_metrics", None),
        processing_class=processor if hasattr(processor, "model_input_names") else None,
        # the EMA's, the stream's and the strategy's callbacks run first: what they add to a checkpoint is written
        # before it is marked complete
        callbacks=[*([ema] if ema else []), *stream_callbacks, *strategy_callbacks(strategy, model, checkpoint),
                   CompleteCheckpoints(run_dir, keep, recipe.raw, data.labels), MetricsLog(run_dir / runs.METRICS_LOG), stop,
                   EpochSeeds(seeded, seed), FiniteWeights(model), *(callbacks or [])],
    )
    if recipe.engine.early_stopping_patience:
        trainer.add_callback(EarlyStoppingCallback(recipe.engine.early_stopping_patience, recipe.engine.early_stopping_threshold))
    guard.state = trainer.state
    if ema:
        ema.attach(trainer)
    console.attach(trainer)
    route_tensorboard(trainer, run_dir)
    distributed.prepare_fsdp(trainer.accelerator, model)
    if checkpoint:
        log.warning("resuming from %s", checkpoint)
    peak = PeakMemory().start()
    try:
        if strategy.needs_training_loop:
            train_metrics = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None).metrics
        else:  # fitted outside the Trainer (linear_probe): no optimizer, no steps, no checkpoints; eval and saving as usual
            train_metrics = strategy.fit(model, fit_inputs)
    except KeyError as exc:  # Trainer finds a misspelt metric_for_best_model only at the first evaluation
        if "metric_for_best_model" not in str(exc):
            raise
        raise ConfigError(f"training.metric_for_best_model: {str(exc.args[0]).split(' Please', 1)[0]}") from None
    resources = peak.result()  # training only: evaluation and saving come after
    if stop.requested:
        log.warning("stopped by SIGTERM at step %d with a complete checkpoint; run the same command to resume", trainer.state.global_step)
        return {"run_dir": run_dir, "metrics": {}, "manifest": None, "trainer": trainer, "stopped": True}

    if check_frozen:  # every rank gathers (a collective under FSDP / ZeRO-3); rank 0 judges
        frozen_after = distributed.fingerprint(frozen_params(model))
        if distributed.from_main(frozen_before is not None and frozen_after != frozen_before):
            raise RunError("frozen base weights changed during training; the run was not saved (report this as a bug)")
    if args.should_save and base_files and base_ref.kind != "run":
        if files_sha256(built.weight_files) != base_files:
            raise RunError(f"base weight files {', '.join(map(str, built.weight_files))} changed on disk during training")

    trainer.remove_callback(EarlyStoppingCallback)  # the final evaluations below use their own metric names
    if ema:
        ema.use_average()  # from here on the model holds the average: evaluated, fingerprinted and saved
    thresholds = controls.choose_thresholds(trainer, recipe.data, data, eval_sets, compute_metrics)
    metrics = {name: trainer.evaluate(eval_dataset=ds, metric_key_prefix=f"eval_{name}") for name, ds in eval_sets.items()}
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    trained_sha = distributed.fingerprint([(n, p) for n, p in unwrapped.named_parameters() if p.requires_grad])  # gathered: same on every rank
    (log.warning if args.world_size > 1 else log.info)("rank %d: trained weights sha256 %s", args.process_index, trained_sha)

    state = distributed.gathered_state(trainer)  # every rank joins the gather of FSDP / DeepSpeed shards
    predictions = report.predictions_after_training(trainer, data, eval_sets, recipe.engine.report)  # every rank
    manifest = None
    if args.should_save:
        strategy.save(unwrapped, run_dir, state_dict=state)
        run.share(strategy.saved_as)
        task.save_processor(processor, run_dir / "processor")
        run.save_check_inputs(_check_inputs(encoded, collator, data))
        manifest = build_manifest(recipe, built, base_ref, base_files, data, frozen_before, trained_sha, distributed.parameter_counts(model),
                                  metrics, train_metrics, args, task)
        # what ran, which a launcher can set (`accelerate launch --mixed_precision bf16`) without the recipe's flags
        mixed = getattr(trainer.accelerator, "mixed_precision", "no")
        manifest["precision"] = {"no": "fp32"}.get(mixed, mixed)
        manifest["nonfinite_skipped"] = guard.skipped
        manifest["resources"] = resources
        if frozen_cache is not None:
            manifest["frozen_cache"] = frozen_cache
        manifest.update(controls.manifest_fields(recipe, data, weights, thresholds))
        if thresholds is not None:
            run.write_json(controls.THRESHOLDS, thresholds)
        run.write_json(runs.EVAL_RESULTS, metrics)
        report.write_after_training(run_dir, recipe.task, manifest, predictions, recipe.engine.report)
        write_model_card(run_dir, recipe, manifest)
        run.finish(manifest)  # the manifest is written last: its presence means "finished"
    trainer.accelerator.wait_for_everyone()
    return {"run_dir": run_dir, "metrics": metrics, "manifest": manifest, "trainer": trainer, "stopped": False}


def _check_inputs(encoded: Any, collator: Any, data: Any) -> dict[str, torch.Tensor]:
    """A few eval rows, already encoded, collated as predict does (labels dropped): export's check inputs."""
    split = encoded[data.eval_splits[0] if data.eval_splits else data.train_split]
    rows = list(itertools.islice(split, CHECK_ROWS)) if isinstance(split, IterableDataset) else [split[i] for i in range(min(CHECK_ROWS, len(split)))]
    batch = collator(rows)
    batch.pop("labels", None)
    return batch


def _check_run_dir(run: Run, recipe: Recipe, data, args, overwrite: bool, resume: bool | str) -> str:
    """Rank 0 decides what the run dir holds ("new" | "overwrite" | "resume") and checks --resume; writes nothing."""
    if not args.should_save:
        return "new"
    mode = run.prepare(recipe.raw, overwrite)
    if mode == "resume" and (run.run_dir / runs.LABELS).is_file():
        before = run.read_json(runs.LABELS)
        if before != data.labels:
            count = lambda labels: "regression" if labels is None else f"{len(labels)} labels"  # noqa: E731
            raise RunError(f"data: {count(data.labels)} now, but the checkpoints in {run.run_dir} were trained with "
                           f"{count(before)} ({before}); pass --overwrite to start again")
    if isinstance(resume, str):
        check_resume_checkpoint(Path(resume), recipe.raw, data.labels)
    return mode


def _start_run_dir(run: Run, recipe: Recipe, data, args, mode: str, resume: bool | str) -> Path | None:
    """Rank 0 clears an overwritten run, writes recipe and labels, picks the checkpoint; every rank gets it."""
    decision: list[Any] = [None]
    if args.should_save:
        if mode == "overwrite":
            clear_run_dir(run.run_dir)
        run.write_recipe(recipe.raw)
        run.write_json(runs.LABELS, data.labels)
        decision = [_resume_from(run, resume) if mode == "resume" or isinstance(resume, str) else None]
    if args.world_size > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(decision)
    return decision[0]


def _resume_from(run: Run, resume: bool | str) -> Path | None:
    if isinstance(resume, str):
        path = Path(resume)
        if not (path / runs.COMPLETE).is_file():
            raise RunError(f"--resume {path}: not a complete checkpoint (no {runs.COMPLETE} marker)")
        return path
    if not resume:
        return None
    for step, path, ok in run.checkpoints():
        if not ok:
            log.warning("ignoring incomplete checkpoint %s (no %s marker)", path, runs.COMPLETE)
    return run.latest_complete_checkpoint()
