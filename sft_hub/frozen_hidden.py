"""Per-token outputs of a model's last frozen block for every training row: capture, extraction, Arrow storage.

The store behind `partial`'s frozen cache (`frozen_cache.py`). A row's entry is the hidden states of its real
tokens only (the attention mask's ones), flattened into one float32 list, so rows of any length share one
Arrow column (`datasets`, memory-mapped on disk) and a batch is padded again when it is collated. Entries
live in the same cache root and under the same `FeatureKey` as the linear probe's pooled features
(`features.py`); the cut ("output of <block>") keeps the two kinds apart. Extraction runs the model in eval
mode under `torch.inference_mode` on length-sorted batches and stops each forward at the captured block.
Writing is atomic (a temporary folder renamed into place), so a crash never leaves a half-written entry.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import torch
from datasets import Dataset, load_from_disk
from datasets.table import InMemoryTable
from torch import nn
from torch.utils.data import DataLoader

from sft_hub.errors import RunError
from sft_hub.features import META, FeatureKey

log = logging.getLogger("sft_hub")
FORMAT = "sft-hub-hidden/1"
COLUMN = "frozen_features"


class _Stop(Exception):
    """Raised by a capture hook that was asked to stop the forward: nothing after the cut is needed."""


def capture(model: nn.Module, name: str, batch: dict[str, torch.Tensor], output: bool, stop: bool) -> tuple[torch.Tensor, object]:
    """(the output of module `name`, or its first input when `output` is False; the model's outputs or None when stopped)."""
    box: list[torch.Tensor] = []
    module = model.get_submodule(name)

    def grab_in(_m: nn.Module, args: tuple) -> None:
        box.append(args[0])
        if stop:
            raise _Stop

    def grab_out(_m: nn.Module, _args: tuple, out: object) -> None:
        box.append(out[0] if isinstance(out, (tuple, list)) else out)
        if stop:
            raise _Stop

    handle = module.register_forward_hook(grab_out) if output else module.register_forward_pre_hook(grab_in)
    result = None
    try:
        result = model(**batch)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not box:
        raise RunError(f"model: the forward pass never reached {name}")
    return box[0].detach(), result


def extract_hidden(model: nn.Module, block: str, rows: Dataset, collate: Callable[[list[dict]], dict],
                   batch_size: int = 64) -> tuple[np.ndarray, np.ndarray, int]:
    """(flat float32 values, int64 row offsets, hidden size): `block`'s output for each row's real tokens, in row order."""
    order = np.argsort(np.asarray(rows["length"]), kind="stable") if "length" in rows.column_names else np.arange(len(rows))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    per_row: list[np.ndarray | None] = [None] * len(rows)
    dim = 0
    try:
        loader = DataLoader(rows, batch_size=batch_size, sampler=order.tolist(), collate_fn=collate)
        starts = iter(range(0, len(order), batch_size))
        with torch.inference_mode():
            for batch in loader:
                start = next(starts)
                batch.pop("labels", None)
                batch = {k: v.to(device) for k, v in batch.items()}
                hidden, _ = capture(model, block, batch, output=True, stop=True)
                hidden = hidden.float().cpu().numpy()
                mask = batch["attention_mask"].bool().cpu().numpy()
                dim = hidden.shape[-1]
                for j, index in enumerate(order[start:start + len(hidden)]):
                    per_row[index] = hidden[j][mask[j]]
    finally:
        model.train(was_training)
    lengths = np.array([len(r) for r in per_row], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths * dim)]).astype(np.int64)
    flat = np.concatenate([r.reshape(-1) for r in per_row]) if per_row else np.zeros(0, np.float32)
    return flat.astype(np.float32, copy=False), offsets, int(dim)


def to_dataset(flat: np.ndarray, offsets: np.ndarray) -> Dataset:
    """One `frozen_features` row per training row, from flat values and offsets (no copy through Python lists)."""
    column = pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), pa.array(flat, pa.float32()))
    return Dataset(InMemoryTable(pa.table({COLUMN: column})))


def store_hidden(folder: Path, flat: np.ndarray, offsets: np.ndarray, dim: int, key: FeatureKey) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=folder.parent))
    try:
        to_dataset(flat, offsets).save_to_disk(str(tmp / "data"))
        meta = {"format": FORMAT, "base": key.base, "cut": key.cut, "preprocessing": key.preprocessing, "data": key.data,
                "rows": int(len(offsets) - 1), "dim": dim, "tokens": int(len(flat) // max(dim, 1))}
        (tmp / META).write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(tmp, folder)
    except OSError:
        if not (folder / META).is_file():  # another process wrote the same entry first: that one stands
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_hidden(folder: Path, rows: int) -> tuple[Dataset, int]:
    meta = json.loads((folder / META).read_text())
    if meta.get("format") != FORMAT or meta.get("rows") != rows:
        raise RunError(f"{folder}: cached hidden states hold {meta.get('rows')} rows ({meta.get('format')}), the split "
                       f"has {rows}; delete the entry to rebuild it")
    return load_from_disk(str(folder / "data")), int(meta["dim"])


def cached_hidden(model: nn.Module, block: str, rows: Dataset, collate: Callable, key: FeatureKey, root: Path,
                  batch_size: int = 64) -> tuple[Dataset, int, dict]:
    """(rows of cached hidden states, hidden size, {"cache": "hit"|"extracted", seconds}): read, or extract and store."""
    folder = root / key.digest()
    wall, cpu = time.perf_counter(), time.process_time()
    hit = (folder / META).is_file()
    if not hit:
        flat, offsets, dim = extract_hidden(model, block, rows, collate, batch_size)
        store_hidden(folder, flat, offsets, dim, key)
    dataset, dim = load_hidden(folder, len(rows))
    info = {"cache": "hit" if hit else "extracted", "extract_seconds": round(time.perf_counter() - wall, 3),
            "extract_cpu_seconds": round(time.process_time() - cpu, 3)}
    log.warning("frozen cache: %s %d rows of %s (%s)", "read" if hit else "extracted and stored", len(rows), key.cut, folder)
    return dataset, dim, info
