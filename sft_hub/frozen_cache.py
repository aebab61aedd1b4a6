"""Frozen computation done once (issue 13): `head` / `partial` train only the top on cached outputs of the frozen bottom.

When the bottom of a text model is frozen, its inputs (token ids) are the same in every epoch, and so are its
outputs once it runs in eval mode. `prepare` (called by the engine) then:
  1. finds the cut (`find_plan`): one trained head module (`head`, `partial n: 0`) -> that module's input, the
     pooled feature the linear probe caches (same key, so the two share the entry); trained top blocks
     (`partial n: k`) -> the per-token output of the last frozen block;
  2. checks on a few training rows that the top alone, fed the captured outputs, gives the model's own logits
     in eval mode (`strategy.cache_frozen: auto` falls back to the normal path when it does not, `true` fails);
  3. reads the outputs from the feature cache (features.py keying: base fingerprint, cut, preprocessing, data
     rows) or computes them once, in eval mode, and stores them (Arrow on disk);
  4. gives the Trainer a dataset of cached rows, a collator that pads them (eval batches go to the task's own
     collator) and a forward on the model that runs only the trainable top for cached batches: for that call
     the embeddings are swapped for the cached tensor and the blocks' ModuleList for its top blocks, so
     parameter names, checkpoints, resume and saving are those of the normal path. Where the model is BERT's
     sequence classifier (it reads position 0 only), the last block runs for [CLS] only and the ones below
     on real tokens only (cls_only.py: exact; the manifest's `frozen_cache.last_block` says which ran).
Frozen layers therefore run in eval mode (no dropout), which the manifest's `frozen_cache` records with the
key. `auto` is off for image and audio tasks (their training rows are augmented: inputs change every epoch)
and under several processes or devices; `true` there is an error naming the field.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import time
import types
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import torch
from datasets import Dataset, concatenate_datasets
from datasets.table import InMemoryTable
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from sft_hub import features as feats
from sft_hub.cls_only import bert_top, why_not as cls_only_why_not
from sft_hub.errors import ConfigError, RunError
from sft_hub.frozen_hidden import COLUMN, capture, cached_hidden

log = logging.getLogger("sft_hub")
CHECK_ROWS = 8  # training rows run through both paths before the cache is trusted
TOLERANCE = 1e-4  # on logits: float noise from another padding length; a wrong cut differs by far more
CLS_ONLY = True  # the cached top's last block for [CLS] only where exact; False measures its share (benchmark)
EVAL_MODE = "eval: the frozen part's outputs were computed once in eval mode (no dropout) and reused every epoch"


@dataclass
class CacheOptions:
    """`head` and `partial` options (their Config dataclasses inherit these fields)."""

    cache_frozen: bool | Literal["auto"] = "auto"  # compute the frozen bottom once (text), train the top on it
    cache_dir: str | None = None  # default $SFT_HUB_CACHE/features, else ~/.cache/sft_hub/features


@dataclass(frozen=True)
class Plan:
    kind: Literal["head", "blocks"]
    cut: str  # head: the module whose input is cached; blocks: the last frozen block (or the embeddings)
    trunk: str = ""  # blocks: the ModuleList holding them
    first_top: int = 0  # blocks: index of the first trained block in it
    embeddings: str = ""  # blocks: the module the cached tensor stands in for
    cls_only: bool = False  # blocks: the last one runs for [CLS] only (cls_only.py: BERT sequence classifiers)

    def describe(self) -> str:
        return feats.Cut(self.cut).describe() if self.kind == "head" else f"output of {self.cut}"


def _under(names: list[str], modules: list[str]) -> bool:
    return all(any(n == m or n.startswith(m + ".") for m in modules) for n in names)


def find_plan(model: nn.Module, info: Any) -> Plan | str:
    """Where the frozen bottom ends, or why there is no single such cut."""
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        return "nothing trains"
    if len(info.head) == 1 and _under(trainable, info.head):
        return Plan("head", info.head[0])
    blocks = list(info.blocks)
    top = next((i for i, b in enumerate(blocks) if any(n.startswith(b + ".") for n in trainable)), len(blocks))
    if not blocks or not _under(trainable, blocks[top:] + info.final + info.head):
        return "parameters below the top blocks train"
    trunk = blocks[0].rpartition(".")[0]
    if not isinstance(model.get_submodule(trunk), nn.ModuleList) or blocks != [f"{trunk}.{i}" for i in range(len(blocks))]:
        return "the model's blocks are not one ModuleList"
    if len(info.embeddings) != 1:
        return f"the model has {len(info.embeddings)} modules below its blocks, not one embeddings module"
    return Plan("blocks", blocks[top - 1] if top else info.embeddings[0], trunk, top, info.embeddings[0])


class _Feed(nn.Module):
    """Stands in for the embeddings during a cached forward: returns the cached hidden states."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = value

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.value


def _set(model: nn.Module, name: str, module: nn.Module) -> nn.Module:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    before = getattr(parent, child)
    setattr(parent, child, module)
    return before


def _top_forward(model: nn.Module, plan: Plan, original: Any, inputs: dict[str, Any]) -> Any:
    x = inputs[COLUMN]
    if plan.kind == "head":
        return SequenceClassifierOutput(logits=model.get_submodule(plan.cut)(x))
    trunk = model.get_submodule(plan.trunk)
    top = list(trunk)[plan.first_top:]
    if plan.cls_only:  # only position 0 of the last block reaches the logits, and no padded position at all
        top = bert_top(top, inputs["attention_mask"])
    embeddings = _set(model, plan.embeddings, _Feed(x))
    _set(model, plan.trunk, nn.ModuleList(top))
    try:  # inputs_embeds gives the model the batch's shape; the swapped embeddings return the cached states
        return original(inputs_embeds=x, attention_mask=inputs["attention_mask"])
    finally:
        _set(model, plan.embeddings, embeddings)
        _set(model, plan.trunk, trunk)


def install(model: nn.Module, plan: Plan) -> None:
    """Give `model` a forward that runs only the top for batches of cached rows (and is unchanged otherwise)."""
    original = model.forward

    def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        if COLUMN not in kwargs:
            return original(*args, **kwargs)
        return _top_forward(self, plan, original, kwargs)

    sig = inspect.signature(original)  # Trainer reads it (loss kwargs); a bound method: `self` goes back in front
    forward.__signature__ = sig.replace(parameters=[inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
                                                    *sig.parameters.values()])
    model.forward = types.MethodType(forward, model)  # a bound method: accelerate's autocast wrapper needs __func__


def uninstall(model: nn.Module) -> None:
    model.__dict__.pop("forward", None)


class CachedCollator:
    """Pads cached rows (per-token ones to the batch's longest, with an attention mask); other batches go to `fallback`."""

    def __init__(self, fallback: Any, dim: int | None) -> None:
        self.fallback, self.dim = fallback, dim

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if COLUMN not in features[0]:
            return self.fallback(features)
        values = [np.asarray(f[COLUMN], dtype=np.float32) for f in features]
        if self.dim:  # rows of per-token states, stored flat: padded into one new (writable) array
            seqs = [v.reshape(-1, self.dim) for v in values]
            lengths = np.array([len(q) for q in seqs])
            x = np.zeros((len(seqs), int(lengths.max()), self.dim), np.float32)
            for i, q in enumerate(seqs):
                x[i, :len(q)] = q
            out = {COLUMN: torch.from_numpy(x),
                   "attention_mask": torch.from_numpy((np.arange(x.shape[1])[None, :] < lengths[:, None]).astype(np.int64))}
        else:
            out = {COLUMN: torch.from_numpy(np.stack(values))}
        if "labels" in features[0]:
            labels = torch.as_tensor(np.asarray([f["labels"] for f in features]))
            out["labels"] = labels.float() if labels.is_floating_point() else labels
        return out


def _check(model: nn.Module, plan: Plan, rows: Dataset, collate: Any, cached_collate: CachedCollator) -> float | str:
    """Max |logit difference| between the model and the top fed captured outputs, in eval mode (or why not comparable)."""
    batch = collate([rows[i] for i in range(min(CHECK_ROWS, len(rows)))])
    batch.pop("labels", None)
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            hidden, out = capture(model, plan.cut, batch, output=plan.kind == "blocks", stop=False)
            if plan.kind == "head" and hidden.dim() != 2:
                return f"the input of {plan.cut} is not one vector per row (shape {tuple(hidden.shape)})"
            if plan.kind == "head":
                rows_ = [{COLUMN: h.cpu().numpy()} for h in hidden]
            else:
                cached_collate.dim = int(hidden.shape[-1])  # the rows are stored flat: the collator reshapes them
                mask = batch["attention_mask"].bool()
                rows_ = [{COLUMN: h[m].reshape(-1).cpu().numpy()} for h, m in zip(hidden, mask)]
            cached = {k: v.to(device) for k, v in cached_collate(rows_).items()}
            got = model(**cached).logits
    finally:
        model.train(was_training)
    return float((got.float() - out.logits.float()).abs().max())


def _last_block(model: nn.Module, plan: Plan) -> str:
    """How the cached top runs its last block: "[CLS] only" (cls_only.py) or "whole: <why not>"."""
    if plan.kind != "blocks":
        return "whole: no trained block"
    why = cls_only_why_not(model, plan.trunk, list(model.get_submodule(plan.trunk))[plan.first_top:])
    why = why or (None if CLS_ONLY else "switched off (frozen_cache.CLS_ONLY)")
    return "[CLS] only" if why is None else f"whole: {why}"


def _why_not(option: Any, info: Any, args: Any, rows: Any) -> str | None:
    if option is False:
        return "strategy.cache_frozen is false"
    if info.modality != "text":
        return f"{info.modality or 'this'} task: training rows may be augmented, so the frozen part's inputs change every epoch"
    if args.world_size > 1 or args.n_gpu > 1:
        return "several processes or devices (not supported yet)"
    if not isinstance(rows, Dataset):
        return "the training rows are streamed (data.streaming), so they are read once per pass, not held"
    return None


def prepare(strategy: Any, model: nn.Module, info: Any, inputs: Any, args: Any) -> tuple[Any, Any, dict | None]:
    """(train dataset, collator, manifest record): the cached ones when the frozen cache applies, else the task's.

    `inputs`: FitInputs (task, recipe, data, encoded, processor, collate). The record is None for strategies
    without the option."""
    rows, collate = inputs.encoded[inputs.data.train_split], inputs.collate
    option = getattr(strategy.config, "cache_frozen", None)
    if option is None:
        return rows, collate, None
    plan = find_plan(model, info)
    reason = _why_not(option, info, args, rows) or (plan if isinstance(plan, str) else None)
    if reason is None:
        last_block = _last_block(model, plan)
        plan = dataclasses.replace(plan, cls_only=last_block == "[CLS] only")
        cached_collate = CachedCollator(collate, None)
        install(model, plan)
        diff = _check(model, plan, rows, collate, cached_collate)
        if isinstance(diff, str) or diff > TOLERANCE:
            uninstall(model)
            reason = diff if isinstance(diff, str) else f"the top fed cached outputs differs from the model by {diff:.2e}"
            if option is True:
                raise RunError(f"strategy.cache_frozen: {reason}")
    if reason is not None:
        if option is True:
            raise ConfigError(f"strategy.cache_frozen: true, but {reason}; use auto or false")
        log.info("frozen cache off: %s", reason)
        return rows, collate, {"used": False, "option": option, "reason": reason}
    dataset, record = _cached_rows(model, plan, inputs, args, getattr(strategy.config, "cache_dir", None))
    record.update(used=True, option=option, cut=plan.describe(), frozen_layers=EVAL_MODE, check_max_abs_diff=diff)
    if plan.kind == "blocks":
        record["last_block"] = last_block
    keep = [c for c in ("labels", "length") if c in rows.column_names]  # labels, and lengths for grouped batches
    side = Dataset.from_dict({c: rows[c] for c in keep})
    train = concatenate_datasets([dataset, side], axis=1).with_format("numpy")
    return train, cached_collate, record


def _cached_rows(model: nn.Module, plan: Plan, inputs: Any, args: Any, cache_dir: str | None) -> tuple[Dataset, dict]:
    data, recipe = inputs.data, inputs.recipe
    rows = inputs.encoded[data.train_split]
    key = feats.FeatureKey(feats.base_fingerprint(model, inputs.info.head), plan.describe(),
                           feats.preprocessing_fingerprint(inputs.task, inputs.processor, recipe.data, recipe.task),
                           feats.data_fingerprint(data.splits[data.train_split]))
    root, batch_size = feats.cache_root(cache_dir), args.per_device_eval_batch_size
    if plan.kind == "blocks":
        dataset, _dim, info = cached_hidden(model, plan.cut, rows, inputs.collate, key, root, batch_size)
    else:  # the linear probe's features (same cut, same key): one entry serves both
        wall, cpu = time.perf_counter(), time.process_time()
        X, hit = feats.cached_features(model, feats.Cut(plan.cut), rows, inputs.collate, key, root, batch_size,
                                       data.train_split, args.dataloader_num_workers)
        if X is None:
            raise RunError("frozen cache: features were not returned on this process")
        column = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1), pa.float32()), int(X.shape[1]))
        dataset = Dataset(InMemoryTable(pa.table({COLUMN: column})))
        info = {"cache": "hit" if hit else "extracted", "extract_seconds": round(time.perf_counter() - wall, 3),
                "extract_cpu_seconds": round(time.process_time() - cpu, 3)}
    return dataset, {"key": key.digest(), "rows": len(rows), **info}
