"""Loading a run directory back into a model (with the base's fingerprint checked) and running it.

Used by `sft-hub eval` and `sft-hub predict`; reads the run directory only, never the original recipe.
Multi-label runs score sigmoid outputs against the thresholds saved with the run (`thresholds.json`).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset, DatasetDict
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import EvalPrediction

from sft_hub.base_model import files_sha256
from sft_hub.controls import load_thresholds
from sft_hub.errors import DataError, RunError
from sft_hub.runs import RunInfo, open_run
from sft_hub.strategies import load_learned
from sft_hub.tasks import get_task

log = logging.getLogger("sft_hub")


@dataclass
class LoadedRun:
    info: RunInfo
    task: Any
    model: torch.nn.Module
    processor: Any

    @property
    def labels(self) -> list[str] | None:
        return self.info.manifest["labels"]

    @property
    def multi_label(self) -> bool:
        return self.info.manifest.get("problem_type") == "multi_label_classification"

    def thresholds(self) -> np.ndarray:
        return load_thresholds(self.info.run_dir, self.labels)


def verify_base(weight_files: list[Path], manifest: dict, allow_mismatch: bool = False) -> None:
    expected = manifest["base"].get("files_sha256") or {}
    if not expected:
        return
    found = files_sha256(weight_files)
    if found != expected:
        name = manifest["base"]["name_or_path"]
        detail = ", ".join(f"{f}: expected {expected.get(f, 'absent')[:12]}, found {found.get(f, 'absent')[:12]}"
                           for f in sorted(set(expected) | set(found)) if expected.get(f) != found.get(f))
        if not allow_mismatch:
            raise RunError(f"base model {name}: its weights differ from the base this run was trained on ({detail}); "
                           "pass --allow-base-mismatch to load anyway")
        log.warning("loading onto a different base than the run was trained on (%s): --allow-base-mismatch given", detail)


def load_run(run_dir: str | Path, allow_base_mismatch: bool = False) -> LoadedRun:
    info = open_run(run_dir)
    recipe, manifest = info.recipe, info.manifest
    task = get_task(recipe.task)
    processor = task.load_processor(recipe.model, saved=info.run_dir / "processor")
    if manifest["saved_as"] == "model":
        model_cfg = dataclasses.replace(recipe.model, name_or_path=str(info.run_dir / "model"), revision=None)
        model = task.build_model(model_cfg, manifest["labels"]).model
    else:
        model_cfg = recipe.model
        if manifest["base"].get("resolved") == "base":
            model_cfg = dataclasses.replace(recipe.model, name_or_path=str(info.run_dir / "base"), revision=None)
        built = task.build_model(model_cfg, manifest["labels"])
        verify_base(built.weight_files, manifest, allow_base_mismatch)
        model = load_learned(built.model, recipe.strategy, info.run_dir)
    model.eval()
    return LoadedRun(info, task, model, processor)


def _batches(loaded: LoadedRun, rows: Dataset, batch_size: int, desc: str):
    recipe = loaded.info.recipe
    encoded = loaded.task.encode(DatasetDict({"rows": rows}), loaded.processor, recipe.data, recipe.model, None)["rows"]
    collate = loaded.task.collator(loaded.processor, recipe.data)
    loader = DataLoader(encoded, batch_size=batch_size, collate_fn=collate)
    device = next(loaded.model.parameters()).device
    for batch in tqdm(loader, desc=desc, leave=False, disable=len(encoded) < 5 * batch_size):
        labels = batch.pop("labels", None)
        with torch.no_grad():
            logits = loaded.model(**{k: v.to(device) for k, v in batch.items()}).logits
        yield logits.float().cpu(), labels


def logits(loaded: LoadedRun, rows: Dataset, batch_size: int = 32) -> np.ndarray:
    if hasattr(loaded, "activate"):
        loaded.activate()
    parts = [lg for lg, _ in _batches(loaded, rows, batch_size, "predicting")]
    return torch.cat(parts).numpy() if parts else np.zeros((0, max(1, len(loaded.labels or [0]))))


def predict(loaded: LoadedRun, rows: Dataset, batch_size: int = 32, top_k: int = 1) -> list[dict[str, Any]]:
    out = logits(loaded, rows, batch_size)
    thresholds = loaded.thresholds() if loaded.multi_label else None
    results = []
    for i, row in enumerate(rows):
        item = {"input": loaded.task.describe_input(row)}
        if thresholds is not None:  # every label at or above its threshold, most probable first
            probs = torch.sigmoid(torch.from_numpy(out[i]).double())
            above = [j for j in torch.argsort(probs, descending=True).tolist() if probs[j] >= thresholds[j]]
            item["labels"] = [{"label": loaded.labels[j], "score": float(probs[j])} for j in above]
            item["scores"] = {name: float(p) for name, p in zip(loaded.labels, probs)}
        elif loaded.labels is None:
            item["score"] = float(out[i].reshape(-1)[0])
        else:
            probs = torch.softmax(torch.from_numpy(out[i]), -1)
            top = torch.topk(probs, min(top_k, len(probs)))
            item["label"] = loaded.labels[int(top.indices[0])]
            item["score"] = float(top.values[0])
            if top_k > 1:
                item["top"] = [{"label": loaded.labels[int(j)], "score": float(p)} for p, j in zip(top.values, top.indices)]
        results.append(item)
    return results


def evaluate(loaded: LoadedRun, split: str | None = None, batch_size: int = 32) -> dict[str, dict[str, float]]:
    recipe = loaded.info.recipe
    data = loaded.task.load_data(recipe.data, int(recipe.training.get("seed", 42)))
    if data.labels != loaded.labels:
        raise DataError(f"data: labels now {data.labels}, but the run was trained with {loaded.labels}")
    splits = [split] if split else data.eval_splits
    compute = loaded.task.metrics(recipe.data, data.labels)
    if loaded.multi_label:
        compute.thresholds = loaded.thresholds()
    results = {}
    for name in splits:
        if name not in data.splits:
            raise DataError(f"--split {name}: not found; splits are {', '.join(data.splits)}")
        rows = data.splits[name]
        preds = logits(loaded, rows, batch_size)
        results[name] = compute(EvalPrediction(predictions=preds, label_ids=np.asarray(rows["labels"])))
    return results


def load_adapters(run_dirs: list[str | Path], allow_base_mismatch: bool = False) -> list[LoadedRun]:
    """Several adapter runs on one base, loaded once (peft multi-adapter); one LoadedRun view per adapter.

    The views share one model: `predict` on a view activates that view's adapter first.
    """
    from peft import PeftModel

    infos = [open_run(r) for r in run_dirs]
    first = infos[0]
    for info in infos:
        if info.manifest["saved_as"] != "adapter":
            raise RunError(f"--adapter {info.run_dir}: strategy {info.manifest['strategy']['name']} saved no adapter")
        same_base = (info.manifest["base"]["name_or_path"], info.manifest["base"]["files_sha256"]) == \
                    (first.manifest["base"]["name_or_path"], first.manifest["base"]["files_sha256"])
        if not same_base:
            raise RunError(f"--adapter {info.run_dir}: trained on base {info.manifest['base']['name_or_path']} "
                           f"({_short(info)}), not on {first.manifest['base']['name_or_path']} ({_short(first)}) like {first.run_dir}")
        if len(info.manifest["labels"] or [0]) != len(first.manifest["labels"] or [0]):
            raise RunError(f"--adapter {info.run_dir}: {len(info.manifest['labels'] or [0])} outputs, but {first.run_dir} has "
                           f"{len(first.manifest['labels'] or [0])}; adapters sharing one base need heads of one size")
    task = get_task(first.recipe.task)
    processor = task.load_processor(first.recipe.model, saved=first.run_dir / "processor")
    built = task.build_model(first.recipe.model, first.manifest["labels"])
    verify_base(built.weight_files, first.manifest, allow_base_mismatch)
    names = [f"{i}_{info.run_dir.name}" for i, info in enumerate(infos)]
    model = PeftModel.from_pretrained(built.model, first.run_dir / "adapter", adapter_name=names[0])
    for name, info in zip(names[1:], infos[1:]):
        model.load_adapter(info.run_dir / "adapter", adapter_name=name)
    model.eval()
    return [AdapterView(info, task, model, processor, name) for name, info in zip(names, infos)]


@dataclass
class AdapterView(LoadedRun):
    adapter_name: str = ""

    def activate(self) -> None:
        self.model.set_adapter(self.adapter_name)


def _short(info: RunInfo) -> str:
    files = info.manifest["base"]["files_sha256"]
    return ", ".join(f"{k} {v[:12]}" for k, v in files.items()) or "no weight files"
