"""Running a run's model: load it (`Run.open(dir).load_model()`, the base's fingerprint checked), predict, evaluate.

Used by `sft-hub eval`, `predict` and `export`; reads the run directory only. Only `evaluate` reads the
data section (it needs the data); predicting needs nothing but the run dir and its base. Multi-label runs
score sigmoid outputs against the thresholds saved with the run (`thresholds.json`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset, DatasetDict
from transformers import EvalPrediction

from sft_hub import fast_predict
from sft_hub.controls import load_thresholds
from sft_hub.errors import DataError, RunError
from sft_hub.runs import Run, verify_base  # noqa: F401  (verify_base re-exported)
from sft_hub.strategies.peft import check_adapter_folder

log = logging.getLogger("sft_hub")


@dataclass
class LoadedRun:
    info: Run
    task: Any
    model: torch.nn.Module
    processor: Any

    @property
    def labels(self) -> list[str] | None:
        return self.info.labels

    @property
    def multi_label(self) -> bool:
        return self.info.manifest.get("problem_type") == "multi_label_classification"

    def thresholds(self) -> np.ndarray:
        return load_thresholds(self.info.run_dir, self.labels)


def load_run(run_dir: str | Path, allow_base_mismatch: bool = False) -> LoadedRun:
    run = Run.open(run_dir)
    return LoadedRun(run, run.task, run.load_model(allow_base_mismatch), run.load_processor())


def encode_batch(task: Any, processor: Any, data_cfg: Any, model_cfg: Any, rows: Dataset) -> dict[str, torch.Tensor]:
    """Raw rows -> one model-input batch, encoded and collated as for prediction (labels dropped)."""
    encoded = task.encode(DatasetDict({"rows": rows}), processor, data_cfg, model_cfg, None)["rows"]
    batch = task.collator(processor, data_cfg)([encoded[i] for i in range(len(encoded))])
    batch.pop("labels", None)
    return batch


def batch_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> np.ndarray:
    device = next(model.parameters()).device
    with torch.no_grad():
        return model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu().numpy()


def logits(loaded: LoadedRun, rows: Dataset, batch_size: int | None = None, merge: bool = True) -> np.ndarray:
    """Logits in input order; sorted batches, a lone adapter merged in memory (see fast_predict)."""
    return fast_predict.logits(loaded, rows, batch_size, merge)


def _label_ids(values: list) -> np.ndarray:
    """Class ids / floats as they are; label sequences (speech: character ids) padded with -100, as the collator pads."""
    if values and isinstance(values[0], (list, tuple, np.ndarray)):
        width = max(len(v) for v in values)
        return np.array([list(v) + [-100] * (width - len(v)) for v in values], dtype=np.int64)
    return np.asarray(values)


def predict(loaded: LoadedRun, rows: Dataset, batch_size: int | None = None, top_k: int = 1) -> list[dict[str, Any]]:
    out = logits(loaded, rows, batch_size)
    if hasattr(loaded.task, "format_predictions"):  # outputs that are not class scores (speech: transcripts)
        return loaded.task.format_predictions(loaded, rows, out, top_k)
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


def evaluate(loaded: LoadedRun, split: str | None = None, batch_size: int | None = None) -> dict[str, dict[str, float]]:
    recipe = loaded.info.recipe
    data_cfg = loaded.info.data_config()
    data = loaded.task.load_data(data_cfg, int(recipe.training.get("seed", 42)))
    if data.labels != loaded.labels:
        raise DataError(f"data: labels now {data.labels}, but the run was trained with {loaded.labels}")
    splits = [split] if split else data.eval_splits
    compute = loaded.task.metrics(data_cfg, data.labels)
    if loaded.multi_label:
        compute.thresholds = loaded.thresholds()
    results = {}
    for name in splits:
        if name not in data.splits:
            raise DataError(f"--split {name}: not found; splits are {', '.join(data.splits)}")
        rows = data.splits[name]
        preds = logits(loaded, rows, batch_size)
        results[name] = compute(EvalPrediction(predictions=preds, label_ids=_label_ids(rows["labels"])))
    return results


def load_adapters(run_dirs: list[str | Path], allow_base_mismatch: bool = False) -> list[LoadedRun]:
    """Several adapter runs on one base, loaded once (peft multi-adapter); one LoadedRun view per adapter.

    The views share one model: `predict` on a view activates that view's adapter first.
    """
    from peft import PeftModel

    infos = [Run.open(r) for r in run_dirs]
    first = infos[0]
    for info in infos:
        if info.strategy.saved_as != "adapter":
            raise RunError(f"--adapter {info.run_dir}: strategy {info.strategy.name} saved no adapter")
        same_base = (info.manifest["base"]["name_or_path"], info.manifest["base"]["files_sha256"]) == \
                    (first.manifest["base"]["name_or_path"], first.manifest["base"]["files_sha256"])
        if not same_base:
            raise RunError(f"--adapter {info.run_dir}: trained on base {info.manifest['base']['name_or_path']} "
                           f"({_short(info)}), not on {first.manifest['base']['name_or_path']} ({_short(first)}) like {first.run_dir}")
        if len(info.labels or [0]) != len(first.labels or [0]):
            raise RunError(f"--adapter {info.run_dir}: {len(info.labels or [0])} outputs, but {first.run_dir} has "
                           f"{len(first.labels or [0])}; adapters sharing one base need heads of one size")
        check_adapter_folder(info.run_dir / "adapter")
    task, processor = first.task, first.load_processor()
    base = first.build_base(allow_base_mismatch)
    names = [f"{i}_{info.run_dir.name}" for i, info in enumerate(infos)]
    model = PeftModel.from_pretrained(base, first.run_dir / "adapter", adapter_name=names[0])
    for name, info in zip(names[1:], infos[1:]):
        model.load_adapter(info.run_dir / "adapter", adapter_name=name)
    model.eval()
    return [AdapterView(info, task, model, processor, name) for name, info in zip(names, infos)]


@dataclass
class AdapterView(LoadedRun):
    adapter_name: str = ""

    def activate(self) -> None:
        self.model.set_adapter(self.adapter_name)


def _short(info: Run) -> str:
    files = info.manifest["base"]["files_sha256"]
    return ", ".join(f"{k} {v[:12]}" for k, v in files.items()) or "no weight files"
