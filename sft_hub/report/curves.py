"""Training curves from `<run>/metrics.jsonl`: training loss, learning rate and every eval metric against step.

One figure (`curves.png`) with a panel per quantity; several runs overlay in every panel (one colour per run,
one line style per eval split). A resumed run may log a step twice: the later record wins.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Logged numbers that are bookkeeping, not curves.
_NOT_CURVES = ("runtime", "per_second", "num_examples", "epoch", "total_flos")
_STYLES = ("-", "--", ":", "-.")


def pyplot():
    """matplotlib on the Agg backend: files only, no display needed."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a crash can leave half a line at the end
            continue
    return records


def _split_of(key: str, splits: list[str]) -> tuple[str, str]:
    """('validation', 'accuracy') from eval_validation_accuracy, or from eval_accuracy when one split is evaluated."""
    rest = key.removeprefix("eval_")
    for split in sorted(splits, key=len, reverse=True):
        if rest.startswith(f"{split}_"):
            return split, rest[len(split) + 1:]
    return (splits[0] if splits else "eval"), rest


def series(records: list[dict[str, Any]], splits: list[str]) -> dict[str, dict[str, dict[int, float]]]:
    """{panel: {line: {step: value}}}: panels 'loss', 'learning rate' and one per eval metric."""
    out: dict[str, dict[str, dict[int, float]]] = {}
    for rec in records:
        step = rec.get("step")
        if not isinstance(step, int):
            continue
        for key, value in rec.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or key == "step":
                continue
            if key == "loss":
                panel, line = "loss", "train"
            elif key == "learning_rate":
                panel, line = "learning rate", "train"
            elif key.startswith("eval_") and not key.endswith(_NOT_CURVES):
                split, metric = _split_of(key, splits)
                panel, line = metric, split
            else:
                continue
            out.setdefault(panel, {}).setdefault(line, {})[step] = float(value)
    return out


def run_series(run_dir: Path, manifest: dict | None) -> dict[str, dict[str, dict[int, float]]]:
    splits = list((manifest or {}).get("metrics", {}))
    return series(read_log(Path(run_dir) / "metrics.jsonl"), splits)


def plot_curves(runs: dict[str, dict[str, dict[str, dict[int, float]]]], path: Path) -> Path | None:
    """Draw `{run name: series}` into one PNG; returns None when nothing was logged."""
    panels: list[str] = []
    for data in runs.values():
        panels += [p for p in data if p not in panels]
    if not panels:
        return None
    first = [p for p in ("loss", "learning rate") if p in panels]
    panels = first + sorted(p for p in panels if p not in first)
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    cols = min(3, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.3 * rows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, panel in zip(axes.flat, panels):
        for r, (run, data) in enumerate(runs.items()):
            lines = data.get(panel, {})
            for s, (line, points) in enumerate(sorted(lines.items(), key=lambda kv: kv[0] != "train")):
                steps = sorted(points)
                label = " ".join(x for x in (run if len(runs) > 1 else "", line) if x)
                ax.plot(steps, [points[k] for k in steps], _STYLES[s % len(_STYLES)], color=colours[r % len(colours)],
                        marker="o" if len(steps) < 30 and line != "train" else None, markersize=3, label=label or None)
        ax.set_title(panel)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
        ax.grid(alpha=0.3)
        if panel == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
