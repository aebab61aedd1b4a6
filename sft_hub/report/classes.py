"""Per-class results of a classifier on one split: confusion matrix (PNG, counts and row-normalised) and a
precision / recall / F1 / support table (Markdown and JSON), computed with scikit-learn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sft_hub.report.curves import pyplot

ANNOTATE_UP_TO = 30  # classes; beyond that the cells are too small to read numbers in


def per_class(labels: np.ndarray, preds: np.ndarray, names: list[str]) -> dict[str, Any]:
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support  # after training, not at import

    ids = list(range(len(names)))
    p, r, f, s = precision_recall_fscore_support(labels, preds, labels=ids, zero_division=0)
    avg = {}
    for kind in ("macro", "weighted"):
        ap, ar, af, _ = precision_recall_fscore_support(labels, preds, labels=ids, average=kind, zero_division=0)
        avg[kind] = {"precision": float(ap), "recall": float(ar), "f1": float(af), "support": int(s.sum())}
    return {
        "classes": [{"label": n, "precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                    for i, n in enumerate(names)],
        "accuracy": float(accuracy_score(labels, preds)) if len(labels) else 0.0,
        "macro_avg": avg["macro"],
        "weighted_avg": avg["weighted"],
        "confusion_matrix": confusion_matrix(labels, preds, labels=ids).tolist(),
    }


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table_markdown(table: dict[str, Any]) -> str:
    rows = ["| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
    for c in table["classes"]:
        rows.append(f"| {_cell(c['label'])} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} | {c['support']} |")
    for name, key in (("macro avg", "macro_avg"), ("weighted avg", "weighted_avg")):
        a = table[key]
        rows.append(f"| *{name}* | {a['precision']:.4f} | {a['recall']:.4f} | {a['f1']:.4f} | {a['support']} |")
    rows.append(f"\nAccuracy: {table['accuracy']:.4f} on {table['macro_avg']['support']} examples.")
    return "\n".join(rows) + "\n"


def plot_confusion(matrix: list[list[int]], names: list[str], path: Path, normalise: bool, title: str) -> Path:
    cm = np.asarray(matrix, dtype=float)
    if normalise:  # each true class's row sums to 1: the recall of every class is on the diagonal
        cm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    n = len(names)
    plt = pyplot()
    side = min(18.0, max(4.5, 0.45 * n + 2.5))
    fig, ax = plt.subplots(figsize=(side + 1, side))
    im = ax.imshow(cm, cmap="Blues", vmin=0, vmax=1 if normalise else max(1.0, cm.max()))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    short = [s if len(s) <= 14 else s[:13] + "…" for s in names]
    rotate = max(map(len, short), default=0) > 3  # long names slant so they do not overlap
    ax.set_xticks(range(n), short, rotation=45 if rotate else 0, ha="right" if rotate else "center", fontsize=8 if n > 12 else 9)
    ax.set_yticks(range(n), short, fontsize=8 if n > 12 else 9)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= ANNOTATE_UP_TO:
        cut = cm.max() / 2 if cm.size else 0
        for i in range(n):
            for j in range(n):
                text = f"{cm[i, j]:.2f}" if normalise else f"{int(cm[i, j])}"
                ax.text(j, i, text, ha="center", va="center", fontsize=7 if n > 12 else 9,
                        color="white" if cm[i, j] > cut else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
