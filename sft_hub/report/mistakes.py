"""The worst mistakes on one split: the most confident wrong predictions (largest errors for regression).

Each modality shows them its own way: the text for text runs, a thumbnail grid (`mistakes.png`) for image
runs, file names and durations for audio runs; every run gets `mistakes.json` and a Markdown table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sft_hub.report.curves import pyplot

SHOWN = 16  # a 4 x 4 grid of thumbnails; as many rows in the tables


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def worst(logits: np.ndarray, labels: np.ndarray, names: list[str] | None, k: int = SHOWN) -> list[dict[str, Any]]:
    """Wrong predictions sorted by the confidence in the wrong class (highest first); regression: by |error|."""
    labels = np.asarray(labels)
    if names is None:
        preds = logits.reshape(len(logits), -1)[:, 0]
        errors = np.abs(preds - labels.astype(float))
        order = np.argsort(-errors, kind="stable")[:k]
        return [{"index": int(i), "true": float(labels[i]), "predicted": float(preds[i]), "error": float(errors[i])} for i in order]
    probs = softmax(logits.astype(np.float64))
    preds = probs.argmax(-1)
    wrong = np.flatnonzero(preds != labels)
    confidence = probs[wrong, preds[wrong]]
    order = wrong[np.argsort(-confidence, kind="stable")][:k]
    return [{"index": int(i), "true": names[int(labels[i])], "predicted": names[int(preds[i])],
             "confidence": float(probs[i, preds[i]]), "true_prob": float(probs[i, int(labels[i])])} for i in order]


def describe(task_name: str, rows: Any, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add what a person needs to recognise each input: text, image file name, or audio file and duration."""
    for item in items:
        row = rows[item["index"]]
        if task_name == "text_classification":
            item["text"] = row["text_a"] + (f" ||| {row['text_b']}" if row.get("text_b") else "")
        elif task_name == "image_classification":
            from sft_hub.tasks.image_data import image_name

            item["file"] = image_name(row["image"])
        elif task_name == "audio_classification":
            from sft_hub.tasks.audio_data import name_of, probe

            item["file"] = name_of(row["audio"])
            _, _, seconds = probe(row["audio"]) if isinstance(row["audio"], dict) else (None, None, None)
            item["seconds"] = round(seconds, 3) if seconds else None
    return items


def _cell(text: Any, limit: int = 300) -> str:
    text = str(text).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def table_markdown(items: list[dict[str, Any]]) -> str:
    if not items:
        return "No mistakes on this split.\n"
    regression = "error" in items[0]
    what = "text" if "text" in items[0] else "file"
    head = ["#", "row", what] + (["seconds"] if "seconds" in items[0] else [])
    head += ["true", "predicted", "error"] if regression else ["true", "predicted", "confidence", "p(true)"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n, it in enumerate(items, 1):
        cells = [n, it["index"], _cell(it.get(what, ""))] + ([it.get("seconds") if it.get("seconds") is not None else "?"] if "seconds" in it else [])
        cells += ([f"{it['true']:.4f}", f"{it['predicted']:.4f}", f"{it['error']:.4f}"] if regression
                  else [_cell(it["true"]), _cell(it["predicted"]), f"{it['confidence']:.3f}", f"{it['true_prob']:.3f}"])
        rows.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(rows) + "\n"


def _short(label: str, limit: int = 14) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


def plot_image_grid(rows: Any, items: list[dict[str, Any]], path: Path) -> Path | None:
    """Thumbnails of the worst image mistakes, titled 'true -> predicted (confidence)'."""
    from sft_hub.tasks.image_data import open_rgb

    if not items:
        return None
    plt = pyplot()
    cols = min(4, len(items))
    nrows = (len(items) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(2.6 * cols, 3.0 * nrows + 0.4), squeeze=False)
    for ax, item in zip(axes.flat, items):
        img = open_rgb(rows[item["index"]]["image"])
        img.thumbnail((256, 256))
        small = max(img.size) < 64  # tiny images (8x8 digits) scale up without blur
        ax.imshow(np.asarray(img), interpolation="nearest" if small else "antialiased")
        ax.set_title(f"{_short(item['true'])} → {_short(item['predicted'])} ({item['confidence']:.2f})", fontsize=8)
        ax.axis("off")
    for ax in list(axes.flat)[len(items):]:
        ax.axis("off")
    fig.suptitle("most confident mistakes: true → predicted (confidence)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
