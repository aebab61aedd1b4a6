"""Frozen features: the pooled output a model's own head sees, computed once per (base, cut, preprocessing, data).

`find_cut` locates the cut point generically: the head's final `nn.Linear` (the layer that produces the
logits), whose *input* is the pooled feature ([CLS] + pooler for BERT, global pool (+ norm) for timm, the
mean over frames for wav2vec2-style audio heads, (CLS + distillation token)/2 + LayerNorm for AST). Head
layers that are a plain `nn.Linear` feeding that classifier through an affine pooling (wav2vec2's
`projector`, applied per frame before the mean) are *bypassed* while extracting (swapped for an identity),
so the feature is the backbone's own pooled output, not a random projection of it; a probe then writes
both layers (see `probe_fit.write_probe`).

`extract` runs the model in eval mode under `torch.inference_mode` with the task's collator, a progress
bar, and a forward pre-hook on the classifier that records its input and stops the forward there. Under
`accelerate launch` each rank extracts its shard of the (length-sorted) rows and rank 0 gathers them.
`cached_features` stores the result with `datasets` (Arrow on disk) under `FeatureKey`, in
`$SFT_HUB_CACHE` (default ~/.cache/sft_hub/features), so a second probe on the same base and data skips
extraction (logged). `frozen_cache.py` (head / partial) stores its entries under the same keying.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from datasets import Dataset, Features, List, Value, load_from_disk
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from sft_hub.base_model import tensors_sha256
from sft_hub.errors import RunError

log = logging.getLogger("sft_hub")
CACHE_ENV = "SFT_HUB_CACHE"
FORMAT = "sft-hub-features/1"
META = "sft_hub_features.json"
# Data fields that only choose rows (already in the data fingerprint) or only matter for training.
_ROW_FIELDS = {"max_train_samples", "max_eval_samples", "train_split", "eval_splits", "validation_fraction", "split_seed",
               "data_files", "data_dir", "folder", "verify_images", "on_bad_image", "dataset_revision"}
# Config fields that are not the frozen computation: labels, names, and run-time flags (Trainer sets use_cache=False,
# so a key taken after the Trainer exists, as linear_probe's is, must equal one taken before, as the frozen cache's is).
_LABEL_CONFIG = {"id2label", "label2id", "num_labels", "problem_type", "_name_or_path", "transformers_version", "architectures",
                 "use_cache"}


@dataclass(frozen=True)
class Cut:
    classifier: str  # the head's final nn.Linear: its input is the feature, its weights are what a probe writes
    bypass: tuple[str, ...] = ()  # head Linear layers between the pooling and the classifier, skipped while extracting

    def describe(self) -> str:
        return f"input of {self.classifier}" + (f" (bypassing {', '.join(self.bypass)})" if self.bypass else "")


def find_cut(model: nn.Module, head_modules: list[str]) -> Cut:
    """The classifier Linear inside the head (out_features == number of outputs) and any projector before it."""
    outputs = int(getattr(getattr(model, "config", None), "num_labels", 0) or 0)
    linears = [(f"{h}.{n}" if n else h, m) for h in head_modules for n, m in model.get_submodule(h).named_modules()
               if isinstance(m, nn.Linear)]
    finals = [(n, m) for n, m in linears if not outputs or m.out_features == outputs]
    if not finals:
        raise RunError(f"model: no nn.Linear with {outputs} outputs in the head ({', '.join(head_modules)}); "
                       "a linear probe needs the head's final layer to be a Linear")
    name, final = finals[-1]
    bypass = tuple(n for n, m in linears if n != name and n in head_modules and m.out_features == final.in_features)
    return Cut(name, bypass)


def base_fingerprint(model: nn.Module, head_modules: list[str]) -> str:
    """Frozen tensors (parameters and buffers, e.g. BatchNorm statistics) outside the head, plus the architecture config."""
    heads = tuple(h + "." for h in head_modules)
    tensors = [(n, t) for n, t in [*model.named_parameters(), *model.named_buffers()] if not n.startswith(heads)]
    config = getattr(model, "config", None)
    arch = {k: v for k, v in (config.to_dict() if config is not None else {}).items() if k not in _LABEL_CONFIG}
    return _sha(tensors_sha256(tensors), json.dumps(arch, sort_keys=True, default=str))


def data_fingerprint(rows: Dataset) -> str:
    """The split's rows in order (Arrow IPC bytes), plus size and mtime of files that image/audio columns point to."""
    digest = hashlib.sha256()
    file_columns = [n for n, f in rows.features.items() if type(f).__name__ in ("Image", "Audio")]
    for table in rows.with_format("arrow").iter(batch_size=4096):
        sink = _arrow_ipc(table)
        digest.update(sink)
        for name in file_columns:
            for value in table.column(name).to_pylist():
                if value and not value.get("bytes") and value.get("path"):
                    stat = os.stat(value["path"])
                    digest.update(f"{value['path']}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def _arrow_ipc(table: Any) -> bytes:
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def preprocessing_fingerprint(task: Any, processor: Any, data_cfg: Any, task_name: str) -> str:
    """What turns rows into model inputs: the saved processor's files and the encoding fields of the data config."""
    with tempfile.TemporaryDirectory() as tmp:
        task.save_processor(processor, Path(tmp))
        files = sorted(p for p in Path(tmp).rglob("*") if p.is_file())
        parts = [f"{p.relative_to(tmp)}|{hashlib.sha256(_stable_bytes(p)).hexdigest()}" for p in files]
    fields = {k: v for k, v in (asdict(data_cfg) if hasattr(data_cfg, "__dataclass_fields__") else dict(data_cfg)).items()
              if k not in _ROW_FIELDS}
    return _sha(task_name, *parts, json.dumps(fields, sort_keys=True, default=str))


def _stable_bytes(path: Path) -> bytes:
    """A saved processor file without run-time state: a fast tokenizer's tokenizer.json records the truncation and
    padding of its last call (absent before the first), while `max_length` is part of the data config anyway."""
    raw = path.read_bytes()
    if path.name != "tokenizer.json":
        return raw
    state = json.loads(raw)
    state.pop("truncation", None)
    state.pop("padding", None)
    return json.dumps(state, sort_keys=True).encode()


@dataclass(frozen=True)
class FeatureKey:
    base: str  # base_fingerprint
    cut: str  # Cut.describe()
    preprocessing: str  # preprocessing_fingerprint
    data: str  # data_fingerprint of the split

    def digest(self) -> str:
        return _sha(FORMAT, self.base, self.cut, self.preprocessing, self.data)[:32]


def cache_root(override: str | None = None) -> Path:
    """Recipe field, else $SFT_HUB_CACHE/features, else ~/.cache/sft_hub/features."""
    if override:
        return Path(override).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser() / "features"
    return Path.home() / ".cache" / "sft_hub" / "features"


@contextlib.contextmanager
def _bypassed(model: nn.Module, names: tuple[str, ...]) -> Iterator[None]:
    """Swap head projectors for identities while extracting; the originals always come back."""
    saved = []
    try:
        for name in names:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            saved.append((parent, child, getattr(parent, child)))
            setattr(parent, child, nn.Identity())
        yield
    finally:
        for parent, child, module in reversed(saved):
            setattr(parent, child, module)


class _Captured(Exception):
    """Raised by the pre-hook: nothing after the classifier's input is needed."""


def _forward_features(model: nn.Module, cut: Cut, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    box: list[torch.Tensor] = []

    def grab(_module: nn.Module, args: tuple) -> None:
        box.append(args[0].detach().float().cpu())
        raise _Captured

    handle = model.get_submodule(cut.classifier).register_forward_pre_hook(grab)
    try:
        model(**batch)
    except _Captured:
        pass
    finally:
        handle.remove()
    if not box:
        raise RunError(f"model: the forward pass never reached {cut.classifier}; cannot capture its input")
    return box[0].reshape(box[0].shape[0], -1)


def extract(model: nn.Module, cut: Cut, rows: Dataset, collate: Callable[[list[dict]], dict], batch_size: int = 64,
            desc: str = "split", num_workers: int = 0) -> np.ndarray | None:
    """Features [rows, dim] in row order on the main process (None on other ranks); every rank runs its shard."""
    from accelerate import PartialState

    state = PartialState()
    # Length-sorted batches pad less; the order is restored after gathering.
    order = np.argsort(np.asarray(rows["length"]), kind="stable") if "length" in rows.column_names else np.arange(len(rows))
    mine = np.array_split(order, state.num_processes)[state.process_index]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    parts = []
    try:  # the DataLoader fetches batches through Dataset.__getitems__ (one Arrow read per batch)
        loader = DataLoader(rows, batch_size=batch_size, sampler=mine.tolist(), collate_fn=collate, num_workers=num_workers)
        with torch.inference_mode(), _bypassed(model, cut.bypass):
            for batch in tqdm(loader, desc=f"features ({desc})", disable=not state.is_main_process or len(loader) < 2):
                batch.pop("labels", None)
                parts.append(_forward_features(model, cut, {k: v.to(device) for k, v in batch.items()}).numpy())
    finally:
        model.train(was_training)
    feats = np.concatenate(parts) if parts else np.zeros((0, model.get_submodule(cut.classifier).in_features), np.float32)
    if state.num_processes > 1:
        from accelerate.utils import gather_object

        gathered = gather_object([(mine, feats)])
        if not state.is_main_process:
            return None
        mine = np.concatenate([g[0] for g in gathered])
        feats = np.concatenate([g[1] for g in gathered])
    out = np.empty_like(feats)
    out[mine] = feats
    return out


def cached_features(model: nn.Module, cut: Cut, rows: Dataset, collate: Callable, key: FeatureKey, root: Path,
                    batch_size: int = 64, desc: str = "split", num_workers: int = 0) -> tuple[np.ndarray | None, bool]:
    """(features, hit): read from `root/<key>` when present, else extract and store (rank 0 decides and writes)."""
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    state = PartialState()
    folder = root / key.digest()
    hit = [state.is_main_process and (folder / META).is_file()]
    if state.num_processes > 1:
        broadcast_object_list(hit)
    if hit[0]:
        feats = load_features(folder, len(rows)) if state.is_main_process else None
        log.warning("features (%s): cache hit %s (%d rows), extraction skipped", desc, folder, len(rows))
        return feats, True
    feats = extract(model, cut, rows, collate, batch_size, desc, num_workers)
    if state.is_main_process:
        store_features(folder, feats, key)
        log.warning("features (%s): extracted %d rows x %d, cached in %s", desc, *feats.shape, folder)
    return feats, False


def store_features(folder: Path, feats: np.ndarray, key: FeatureKey) -> None:
    """Write atomically (a temporary folder renamed into place): a crash never leaves a half-written entry."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=folder.parent))
    try:
        schema = Features({"features": List(Value("float32"), length=int(feats.shape[1]))})
        Dataset.from_dict({"features": feats.astype(np.float32, copy=False)}, features=schema).save_to_disk(str(tmp / "data"))
        (tmp / META).write_text(json.dumps({"format": FORMAT, **asdict(key), "rows": int(feats.shape[0]),
                                            "dim": int(feats.shape[1])}, indent=2) + "\n")
        os.replace(tmp, folder)
    except OSError:
        if not (folder / META).is_file():  # another process may have written the same entry first: that one stands
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_features(folder: Path, rows: int | None = None) -> np.ndarray:
    meta = json.loads((folder / META).read_text())
    table = load_from_disk(str(folder / "data")).data.column("features").combine_chunks()
    feats = np.asarray(table.values, dtype=np.float32).reshape(-1, meta["dim"])
    if rows is not None and len(feats) != rows:
        raise RunError(f"{folder}: cached features have {len(feats)} rows, the split has {rows}; delete the entry to rebuild it")
    return feats


def _sha(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()
