"""Metrics computed offline with scikit-learn / scipy, as GLUE and the `evaluate` metric modules define them.

`classification_metrics` gives accuracy and macro precision/recall/F1 (plus binary F1, MCC when asked);
`regression_metrics` gives Pearson, Spearman and MSE; `multilabel_metrics` gives micro/macro F1 at given
per-label thresholds and mAP (threshold-free), and `choose_thresholds` picks those thresholds on a
validation split (`MultiLabelMetrics` carries them). `make_compute_metrics` builds the Trainer's
`compute_metrics` for a task, adding `num_examples` (how many predictions were scored: under DDP every
example exactly once) and, for online users, any Hub `evaluate` metrics a recipe names.
scikit-learn and scipy are imported by the functions that use them: a training process loads them at its
first evaluation, not before its training steps (sklearn.metrics alone is ~40 MB of resident memory).
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
from transformers import EvalPrediction

CLASSIFICATION_EXTRAS = ("f1", "mcc")


def classification_metrics(preds: np.ndarray, labels: np.ndarray, extras: Iterable[str] = ()) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef, precision_recall_fscore_support

    preds, labels = np.asarray(preds).astype(int), np.asarray(labels).astype(int)
    p, r, f, _ = precision_recall_fscore_support(labels, preds, average="macro", zero_division=0)
    out = {
        "accuracy": float(accuracy_score(labels, preds)),
        "precision_macro": float(p),
        "recall_macro": float(r),
        "f1_macro": float(f),
    }
    if "f1" in extras:  # GLUE's F1 for MRPC/QQP: binary, positive class 1
        out["f1"] = float(f1_score(labels, preds, average="binary", pos_label=1, zero_division=0))
    if "mcc" in extras:  # GLUE's CoLA metric
        out["matthews_correlation"] = float(matthews_corrcoef(labels, preds))
    return out


def regression_metrics(preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    from scipy.stats import pearsonr, spearmanr

    preds, labels = np.asarray(preds, dtype=float).reshape(-1), np.asarray(labels, dtype=float).reshape(-1)
    constant = np.ptp(preds) == 0 or np.ptp(labels) == 0
    return {
        "pearson": 0.0 if constant else float(pearsonr(preds, labels)[0]),
        "spearmanr": 0.0 if constant else float(spearmanr(preds, labels)[0]),
        "mse": float(np.mean((preds - labels) ** 2)),
    }


def confusion(preds: np.ndarray, labels: np.ndarray, num_labels: int) -> list[list[int]]:
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(np.asarray(labels).astype(int), np.asarray(preds).astype(int), labels=list(range(num_labels))).tolist()


def logits_of(predictions) -> np.ndarray:
    return predictions[0] if isinstance(predictions, (tuple, list)) else predictions


THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.05), 2)  # a coarse grid: fine grids overfit small validation sets


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


def multilabel_metrics(probs: np.ndarray, labels: np.ndarray, thresholds: np.ndarray) -> dict[str, float]:
    """F1 (micro, macro over labels), micro precision/recall and exact match at `thresholds`; mAP over labels with positives."""
    from sklearn.metrics import average_precision_score, f1_score, precision_recall_fscore_support

    labels = np.asarray(labels).astype(int)
    preds = (np.asarray(probs) >= np.asarray(thresholds)).astype(int)
    p, r, f, _ = precision_recall_fscore_support(labels, preds, average="micro", zero_division=0)
    present = labels.sum(axis=0) > 0  # average precision is undefined for a label with no positives
    ap = [average_precision_score(labels[:, j], probs[:, j]) for j in np.flatnonzero(present)]
    return {
        "f1_micro": float(f),
        "f1_macro": float(f1_score(labels, preds, average="macro", zero_division=0)),
        "precision_micro": float(p),
        "recall_micro": float(r),
        "exact_match": float((preds == labels).all(axis=1).mean()),
        "mAP": float(np.mean(ap)) if ap else 0.0,
    }


def _best(scores: list[float]) -> float:
    """The grid threshold with the best score; ties go to the one nearest 0.5 (then the lower)."""
    best = max(scores)
    ties = [t for t, s in zip(THRESHOLD_GRID, scores) if s == best]
    return float(min(ties, key=lambda t: (abs(t - 0.5), t)))


def choose_thresholds(probs: np.ndarray, labels: np.ndarray, mode: str | float) -> np.ndarray:
    """Per-label (best F1 of each label), global (best micro F1) or fixed thresholds; 0.5 for labels without positives."""
    from sklearn.metrics import f1_score

    labels = np.asarray(labels).astype(int)
    n = labels.shape[1]
    if not isinstance(mode, str):
        return np.full(n, float(mode))
    if mode == "global":
        scores = [f1_score(labels, (probs >= t).astype(int), average="micro", zero_division=0) for t in THRESHOLD_GRID]
        return np.full(n, _best(scores))
    out = np.full(n, 0.5)
    for j in range(n):
        if labels[:, j].any():
            out[j] = _best([f1_score(labels[:, j], (probs[:, j] >= t).astype(int), zero_division=0) for t in THRESHOLD_GRID])
    return out


class MultiLabelMetrics:
    """The Trainer's `compute_metrics` for multi-label runs: sigmoid of the logits, scored at `thresholds`.

    The thresholds are 0.5 during training; the engine sets the ones chosen on the validation split before
    the final evaluation, and `sft-hub eval` sets the ones saved with the run, so both report the same numbers.
    """

    def __init__(self, num_labels: int):
        self.thresholds = np.full(num_labels, 0.5)

    def __call__(self, eval_pred: EvalPrediction) -> dict[str, float]:
        probs = sigmoid(logits_of(eval_pred.predictions))
        out = multilabel_metrics(probs, eval_pred.label_ids, self.thresholds)
        out["num_examples"] = int(len(probs))
        return out


def make_compute_metrics(
    regression: bool, extras: Iterable[str] = (), hub_metrics: Iterable[str] = ()
) -> Callable[[EvalPrediction], dict[str, float]]:
    extras, hub_metrics = tuple(extras), tuple(hub_metrics)

    def compute(eval_pred: EvalPrediction) -> dict[str, float]:
        logits, labels = logits_of(eval_pred.predictions), eval_pred.label_ids
        if regression:
            preds = np.asarray(logits).reshape(-1)
            out = regression_metrics(preds, labels)
        else:
            preds = np.asarray(logits).argmax(-1)
            out = classification_metrics(preds, labels, extras)
        for name in hub_metrics:  # needs the Hub: evaluate.load fetches the metric script
            import evaluate

            out.update({f"{name}_{k}" if k in out else k: v for k, v in evaluate.load(name).compute(predictions=preds, references=labels).items()})
        out["num_examples"] = int(len(labels))
        return out

    return compute
