"""Metrics computed offline with scikit-learn / scipy, as GLUE and the `evaluate` metric modules define them.

`classification_metrics` gives accuracy and macro precision/recall/F1 (plus binary F1, MCC when asked);
`regression_metrics` gives Pearson, Spearman and MSE. `make_compute_metrics` builds the Trainer's
`compute_metrics` for a task, adding `num_examples` (how many predictions were scored: under DDP every
example exactly once) and, for online users, any Hub `evaluate` metrics a recipe names.
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, matthews_corrcoef, precision_recall_fscore_support
from transformers import EvalPrediction

CLASSIFICATION_EXTRAS = ("f1", "mcc")


def classification_metrics(preds: np.ndarray, labels: np.ndarray, extras: Iterable[str] = ()) -> dict[str, float]:
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
    preds, labels = np.asarray(preds, dtype=float).reshape(-1), np.asarray(labels, dtype=float).reshape(-1)
    constant = np.ptp(preds) == 0 or np.ptp(labels) == 0
    return {
        "pearson": 0.0 if constant else float(pearsonr(preds, labels)[0]),
        "spearmanr": 0.0 if constant else float(spearmanr(preds, labels)[0]),
        "mse": float(np.mean((preds - labels) ** 2)),
    }


def confusion(preds: np.ndarray, labels: np.ndarray, num_labels: int) -> list[list[int]]:
    return confusion_matrix(np.asarray(labels).astype(int), np.asarray(preds).astype(int), labels=list(range(num_labels))).tolist()


def logits_of(predictions) -> np.ndarray:
    return predictions[0] if isinstance(predictions, (tuple, list)) else predictions


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
