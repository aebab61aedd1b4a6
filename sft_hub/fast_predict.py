"""Running a loaded run over many inputs fast: what `sft-hub predict` and `eval` compute their logits with.

- A run with one LoRA adapter is merged into its base in memory before the first batch (one matmul per
  layer instead of three, no adapter bookkeeping); several adapters sharing a base (`--adapter`) stay
  apart and switch per view. Merging changes logits only by float rounding (~1e-7); export's check
  compares the unmerged adapter against the merged file, so it asks for `merge=False`.
- Text rows are tokenised with one tokenizer call (no `datasets.map`), and batches are cut from the
  rows sorted by token count, longest first, so each batch pads to nearly its own length; logits come
  back in input order.
- Convolutional models (images) run on an in-memory copy with BatchNorm folded into the convolutions
  and NHWC weights and batches (`fast_image`; checked against the plain model, which it falls back to).
- `torch.inference_mode` (no autograd records, no version counters), and a batch size chosen for the
  modality when the caller gives none: sorted text batches pad little, so larger batches cost nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from datasets import Dataset, DatasetDict
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from sft_hub import fast_image

BATCH_SIZE = {"text_classification": 64, "image_classification": 32, "audio_classification": 32, "speech_recognition": 16}


def default_batch_size(task_name: str) -> int:
    return BATCH_SIZE.get(task_name, 32)


def inference_model(loaded: Any, merge: bool = True) -> torch.nn.Module:
    """The model to run: a lone LoRA adapter merged into its base (once, in place); otherwise the loaded model."""
    from peft import PeftModel

    model = loaded.model
    if merge and isinstance(model, PeftModel) and not hasattr(loaded, "activate") and len(model.peft_config) == 1 \
            and getattr(model.peft_config[next(iter(model.peft_config))], "peft_type", None) == "LORA":
        model = model.merge_and_unload().eval()
        loaded.model = model  # the run's own view: later calls reuse the merged model
    return model


def _rows(loaded: Any, rows: Dataset) -> tuple[Any, list[int] | None]:
    """(indexable features for the collator, their lengths for sorting, or None when all are alike)."""
    recipe, task = loaded.info.recipe, loaded.task
    if hasattr(task, "tokenize") and "text_a" in rows.column_names:
        cols = rows.to_dict()
        enc = task.tokenize(loaded.processor, recipe.data, cols["text_a"], cols.get("text_b"))
        keys = [k for k in enc.keys() if k != "length"]
        labels = cols.get("labels")
        features = [{**{k: enc[k][i] for k in keys}, **({"labels": labels[i]} if labels is not None else {})} for i in range(len(rows))]
        return features, enc["length"]
    encoded = task.encode(DatasetDict({"rows": rows}), loaded.processor, recipe.data, recipe.model, None)["rows"]
    return encoded, None


def logits(loaded: Any, rows: Dataset, batch_size: int | None = None, merge: bool = True) -> np.ndarray:
    """Logits for `rows` in their input order, shape (len(rows), outputs)."""
    recipe = loaded.info.recipe
    if hasattr(loaded, "activate"):
        loaded.activate()
    model = inference_model(loaded, merge)
    n = len(rows)
    if n == 0:
        return np.zeros((0, max(1, len(loaded.labels or [0]))), dtype=np.float32)
    features, lengths = _rows(loaded, rows)
    order = np.argsort(-np.asarray(lengths), kind="stable") if lengths is not None else np.arange(n)
    size = batch_size or default_batch_size(recipe.task)
    batches = [order[s:s + size].tolist() for s in range(0, n, size)]
    run = fast_image.runner(loaded, model, fast=merge)
    collate = loaded.task.collator(fast_image.processor(loaded.processor, run), recipe.data)
    loader = DataLoader(features, batch_sampler=batches, collate_fn=collate)
    device = next(model.parameters()).device
    parts = []
    with torch.inference_mode():
        for batch in tqdm(loader, desc="predicting", leave=False, disable=n < 5 * size):
            batch.pop("labels", None)
            parts.append(run({k: v.to(device) for k, v in batch.items()}).float().cpu())
    if len({p.shape[1:] for p in parts}) > 1:  # sequence outputs (CTC frames): pad time with -100, as the Trainer does
        width = max(p.shape[1] for p in parts)
        parts = [torch.nn.functional.pad(p, (0, 0, 0, width - p.shape[1]), value=-100.0) for p in parts]
    out = torch.empty((n, *parts[0].shape[1:]), dtype=torch.float32)
    out[torch.as_tensor(order)] = torch.cat(parts)
    return out.numpy()
