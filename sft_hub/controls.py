"""The training controls a recipe can turn on, as the engine and inference see them: loss kind and class
weights (see `losses.py`), multi-label decision thresholds, and what a run records about them.

Multi-label thresholds are chosen once training ends, on the first eval split (the validation split),
per label or globally (`data.threshold`), or fixed by the recipe. They are saved as `thresholds.json` in
the run dir and in the manifest; the final metrics, `sft-hub eval` and `sft-hub predict` all use them.
F1 on the split the thresholds were tuned on is optimistic; mAP does not depend on thresholds.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from sft_hub import losses, metrics, runs
from sft_hub.tasks.base import TaskData

log = logging.getLogger("sft_hub")
THRESHOLDS = "thresholds.json"


def loss_kind(data: TaskData) -> losses.LossKind:
    return "regression" if data.is_regression else "multi_label" if data.multi_label else "single_label"


def class_weights(data_cfg: Any, data: TaskData) -> list[float] | None:
    spec = getattr(data_cfg, "class_weights", None)
    if spec is None:
        return None
    weights = losses.class_weights(spec, data.labels, data.splits[data.train_split]["labels"], data.multi_label)
    log.warning("class weights: %s", ", ".join(f"{n}={w:.3g}" for n, w in zip(data.labels, weights)))
    return weights


def choose_thresholds(trainer: Any, data_cfg: Any, data: TaskData, eval_sets: dict, compute: Any) -> dict[str, Any] | None:
    """Multi-label runs: pick thresholds on the first eval split and hand them to `compute` (the run's metrics)."""
    if not data.multi_label:
        return None
    mode = data_cfg.threshold if data_cfg.threshold is not None else "per_label"
    split = next(iter(eval_sets), None)
    if isinstance(mode, str) and split is None:
        log.warning("multi-label: no eval split to choose thresholds on; using 0.5 for every label")
        mode = 0.5
    if isinstance(mode, str):
        out = trainer.predict(eval_sets[split], metric_key_prefix="thresholds")
        chosen = metrics.choose_thresholds(metrics.sigmoid(metrics.logits_of(out.predictions)), out.label_ids, mode)
    else:
        chosen = np.full(len(data.labels), float(mode))
    compute.thresholds = chosen
    return {"mode": mode if isinstance(mode, str) else "fixed", "split": split if isinstance(mode, str) else None,
            "thresholds": {name: float(t) for name, t in zip(data.labels, chosen)}}


def load_thresholds(run_dir: Path, labels: list[str]) -> np.ndarray:
    saved = runs.read_json(run_dir / THRESHOLDS)["thresholds"]
    return np.asarray([float(saved[name]) for name in labels])


def manifest_fields(recipe: Any, data: TaskData, weights: list[float] | None, thresholds: dict | None) -> dict[str, Any]:
    kind = loss_kind(data)
    ema = recipe.engine.ema
    return {
        "problem_type": {"regression": "regression", "multi_label": "multi_label_classification"}.get(kind, "single_label_classification"),
        "class_weights": dict(zip(data.labels, weights)) if weights is not None else None,
        "thresholds": thresholds,
        "ema": {"decay": ema.decay, "warmup": ema.warmup, "warmup_power": ema.warmup_power} if ema is not None else None,
    }
