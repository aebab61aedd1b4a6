"""`sft-hub select`'s leaderboard: the JSON file (schema below), the Markdown table, and the PNG.

`leaderboard.json` (schema "sft-hub-leaderboard/1"):
```
schema            "sft-hub-leaderboard/1"
recipe, overrides the recipe file (absolute) and the command-line overrides
task              text_classification | image_classification | audio_classification
metric            {name, greater_is_better}: the recipe's main metric
ranked_on         {split, carved_from_train_by ("select" | "recipe"), validation_fraction, seed, rows}
reported_splits   the recipe's own eval splits: evaluated and shown, never used to rank
cheap             {strategy {name, ...options}, sample, budget {kind, value}, ranking [models, best first]}
finetune          {top_k, models [fine-tuned backbones], budget {kind, value}, strategies [specs as given]}
candidates        [row], fine-tunes best first then cheap-stage rows best first; row:
                    stage ("cheap" | "finetune"), rank (1.. over ok fine-tunes, else null), model, label,
                    strategy {name, ...}, run_dir, status ("ok" | "failed"), error (failed only), reused,
                    score (metric on ranked_on.split), loss (on ranked_on.split; breaks ties), reported {split: metric}, trainable_params, total_params,
                    saved_bytes, train_seconds, train_samples_per_second, train_steps, peak_rss_bytes,
                    rss_scope ("run" | "process"), cuda_max_memory_bytes, wall_seconds (null when reused)
best              {model, strategy, run_dir, score} of rank 1, or null
cheap_top_is_best_after_finetune   whether the cheap stage's best backbone is rank 1's backbone
wall_seconds      {cheap, finetune, total} of this select command (reused candidates cost ~0)
```
The PNG plots the ranking metric against trainable parameters and against training time (matplotlib, Agg).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sft_hub.compare import human_bytes, human_count, markdown_table, num
from sft_hub.runs import write_json

SCHEMA = "sft-hub-leaderboard/1"
TOP_KEYS = {"schema": str, "recipe": str, "overrides": list, "task": str, "metric": dict, "ranked_on": dict,
            "reported_splits": list, "cheap": dict, "finetune": dict, "candidates": list, "best": (dict, type(None)),
            "cheap_top_is_best_after_finetune": (bool, type(None)), "wall_seconds": dict}
ROW_KEYS = {"stage": str, "rank": (int, type(None)), "model": str, "label": str, "strategy": dict, "run_dir": str,
            "status": str, "reused": bool, "score": (float, type(None))}
OK_ROW_KEYS = {"reported": dict, "trainable_params": int, "total_params": int, "saved_bytes": int,
               "train_seconds": (float, int, type(None)), "train_samples_per_second": (float, int, type(None)),
               "train_steps": (int, type(None)), "peak_rss_bytes": (int, type(None)), "wall_seconds": (float, type(None))}


def short_model(name: str) -> str:
    """A local folder by its last component (the JSON keeps the full path); Hub ids and aliases as given."""
    return Path(name).name if Path(name).is_absolute() else name


def check(board: dict[str, Any]) -> None:
    """Raise ValueError naming the first key that breaks the schema above."""
    def need(obj: dict, keys: dict, where: str) -> None:
        for key, kind in keys.items():
            if key not in obj:
                raise ValueError(f"{where}.{key}: missing")
            if not isinstance(obj[key], kind) or isinstance(obj[key], bool) and kind in (int, (int, type(None))):
                raise ValueError(f"{where}.{key}: {type(obj[key]).__name__} is not {kind}")

    need(board, TOP_KEYS, "leaderboard")
    if board["schema"] != SCHEMA:
        raise ValueError(f"leaderboard.schema: {board['schema']!r} is not {SCHEMA!r}")
    need(board["ranked_on"], {"split": str, "carved_from_train_by": str, "seed": int, "rows": int}, "leaderboard.ranked_on")
    for i, row in enumerate(board["candidates"]):
        need(row, ROW_KEYS, f"candidates[{i}]")
        if row["stage"] not in ("cheap", "finetune") or row["status"] not in ("ok", "failed"):
            raise ValueError(f"candidates[{i}]: stage {row['stage']!r} / status {row['status']!r}")
        need(row, OK_ROW_KEYS if row["status"] == "ok" else {"error": str}, f"candidates[{i}]")
    ranks = [r["rank"] for r in board["candidates"] if r["rank"] is not None]
    if ranks != list(range(1, len(ranks) + 1)):
        raise ValueError(f"candidates: ranks {ranks} are not 1..{len(ranks)} in order")


def markdown(board: dict[str, Any]) -> str:
    r, metric = board["ranked_on"], board["metric"]["name"]
    reported = board["reported_splits"]
    header = ["rank", "stage", "model", "strategy", f"{metric} ({r['split']})", *(f"{metric} ({s})" for s in reported),
              "trainable", "total", "saved", "train s", "samples/s", "peak RSS"]
    cells = []
    for row in board["candidates"]:
        if row["status"] != "ok":
            cells.append(["-", row["stage"], short_model(row["model"]), row["label"], "failed: " + row["error"][:60], *("-" for _ in reported),
                          *("-" for _ in range(6))])
            continue
        cells.append([str(row["rank"] or "-"), row["stage"], short_model(row["model"]), row["label"], num(row["score"], ".4f"),
                      *(num(row["reported"].get(s), ".4f") for s in reported), human_count(row["trainable_params"]),
                      human_count(row["total_params"]), human_bytes(row["saved_bytes"]), num(row["train_seconds"]),
                      num(row["train_samples_per_second"]), human_bytes(row["peak_rss_bytes"])])
    by = "select" if r["carved_from_train_by"] == "select" else "the recipe"
    lines = [f"Ranked on `{r['split']}`: {r['rows']} rows carved from train by {by} "
             f"(validation_fraction {r['validation_fraction']:.4g}, seed {r['seed']})."
             + (f" Reported, never used to choose: {', '.join(f'`{s}`' for s in reported)}." if reported else ""),
             "", markdown_table(header, cells), ""]
    cheap = board["cheap"]
    lines.append(f"Cheap stage ({cheap['strategy']['name']}, <= {cheap['sample']} training rows): "
                 f"{' > '.join(map(short_model, cheap['ranking']))}; fine-tuned: {', '.join(map(short_model, board['finetune']['models'])) or 'none'}.")
    if board["best"]:
        b = board["best"]
        lines.append(f"Best: {short_model(b['model'])} with {b['strategy']} ({metric} {b['score']:.4f} on `{r['split']}`); "
                     f"cheap stage's top backbone is {'' if board['cheap_top_is_best_after_finetune'] else 'not '}the best after fine-tuning.")
    w = board["wall_seconds"]
    lines.append(f"Wall time: cheap {w['cheap']:.0f} s, fine-tune {w['finetune']:.0f} s, total {w['total']:.0f} s.")
    return "\n".join(lines)


def plot(board: dict[str, Any], path: Path) -> Path:
    """Metric vs trainable parameters (log) and vs training time; fine-tunes filled, cheap stage hollow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in board["candidates"] if r["status"] == "ok" and r["score"] is not None]
    models = list(dict.fromkeys(r["model"] for r in rows))
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(models)}
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    for ax, key, xlabel in ((axes[0], "trainable_params", "trainable parameters (log)"), (axes[1], "train_seconds", "training time (s)")):
        for row in rows:
            x = row.get(key)
            if x is None or key == "trainable_params" and x <= 0:
                continue
            fine = row["stage"] == "finetune"
            ax.scatter(x, row["score"], s=70, marker="o" if fine else "s", edgecolors=colors[row["model"]],
                       facecolors=colors[row["model"]] if fine else "none", linewidths=1.5, zorder=3)
            ax.annotate(row["label"].split(":")[0] + ("" if fine else " (cheap)"), (x, row["score"]), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")
        if key == "trainable_params":
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{board['metric']['name']} on {board['ranked_on']['split']}")
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], marker="o", ls="", color=colors[m], label=short_model(m)) for m in models]
    handles += [plt.Line2D([], [], marker="s", ls="", mfc="none", color="gray", label="cheap stage")]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), fontsize=8, frameon=False)
    fig.suptitle(f"sft-hub select: {Path(board['recipe']).name} ({board['task']})")
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(board: dict[str, Any], folder: Path) -> dict[str, Path]:
    """leaderboard.json, leaderboard.md and leaderboard.png in `folder`."""
    check(board)
    folder.mkdir(parents=True, exist_ok=True)
    out = {"json": folder / "leaderboard.json", "md": folder / "leaderboard.md", "png": folder / "leaderboard.png"}
    write_json(out["json"], board)
    out["md"].write_text(markdown(board) + "\n")
    plot(board, out["png"])
    return out


def read(path: Path) -> dict[str, Any]:
    board = json.loads(Path(path).read_text())
    check(board)
    return board
