"""`sft-hub compare RUN...`: finished runs side by side, read from their manifests (never re-trained or re-run).

One row per run: strategy, trainable / total parameters, bytes of what the strategy saved (`<run>/<saved_as>`),
training time, training samples/s, peak memory of training (`manifest.resources`, recorded by the engine;
"-" for runs written before it was), and the main metric on the first eval split. Markdown for people,
`--json` (the same rows, raw numbers) for scripts. `sft-hub select` builds its leaderboard rows from these.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sft_hub.errors import RunError
from sft_hub.runs import METRICS_LOG, Run


def folder_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def metric_value(manifest: dict[str, Any], split: str | None = None, name: str | None = None) -> float | None:
    """The main metric (or `name`) on `split` (default: the first eval split) from a manifest's metrics."""
    metrics = manifest.get("metrics") or {}
    split = split or next(iter(metrics), None)
    name = name or manifest["main_metric"]["name"]
    value = (metrics.get(split) or {}).get(f"eval_{split}_{name}")
    return float(value) if value is not None else None


def last_step(run_dir: Path) -> int | None:
    """The optimizer steps a run took (the last record of its metrics log), None without a log."""
    log = run_dir / METRICS_LOG
    lines = log.read_text().splitlines() if log.is_file() else []
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue
    return None


def run_row(run_dir: str | Path) -> dict[str, Any]:
    """The comparable facts of one finished run (RunError naming the folder when it is not one)."""
    run = Run.open(run_dir)
    m = run.manifest
    if "parameters" not in m or "main_metric" not in m:
        raise RunError(f"{run_dir}: manifest.json lacks parameters/main_metric; is it an sft-hub run?")
    train, resources = m.get("train") or {}, m.get("resources") or {}
    split = next(iter(m.get("metrics") or {}), None)
    return {
        "run_dir": str(run.run_dir),
        "task": m.get("task"),
        "model": m["base"]["name_or_path"],
        "strategy": m["strategy"],
        "saved_as": m.get("saved_as"),
        "trainable_params": m["parameters"]["trainable"],
        "total_params": m["parameters"]["total"],
        "saved_bytes": folder_bytes(run.run_dir / m["saved_as"]) if m.get("saved_as") else None,
        "train_seconds": train.get("train_runtime"),
        "train_samples_per_second": train.get("train_samples_per_second"),
        "train_steps": last_step(run.run_dir),
        "peak_rss_bytes": resources.get("peak_rss_bytes"),
        "rss_scope": resources.get("rss_scope"),
        "cuda_max_memory_bytes": resources.get("cuda_max_memory_bytes"),
        "metric": {"name": m["main_metric"]["name"], "split": split, "value": metric_value(m, split)},
    }


def compare(run_dirs: list[str | Path]) -> list[dict[str, Any]]:
    if not run_dirs:
        raise RunError("compare: give one or more run directories")
    return [run_row(d) for d in run_dirs]


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def human_count(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def num(value: float | None, fmt: str = ".1f") -> str:
    return "-" if value is None else format(value, fmt)


def strategy_text(strategy: dict[str, Any]) -> str:
    return ":".join([strategy["name"], *(f"{k}={v}" for k, v in strategy.items() if k != "name")])


def peak_memory(row: dict[str, Any]) -> str:
    if row.get("cuda_max_memory_bytes") is not None:
        return f"{human_bytes(row['peak_rss_bytes'])} RSS / {human_bytes(row['cuda_max_memory_bytes'])} CUDA"
    return human_bytes(row.get("peak_rss_bytes"))


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def markdown(rows: list[dict[str, Any]]) -> str:
    header = ["run", "strategy", "trainable", "total", "saved", "train s", "samples/s", "peak memory", "metric"]
    cells = []
    for r in rows:
        metric = r["metric"]
        value = f"{metric['name']} {num(metric['value'], '.4f')} ({metric['split']})"
        cells.append([Path(r["run_dir"]).name, strategy_text(r["strategy"]), human_count(r["trainable_params"]),
                      human_count(r["total_params"]), human_bytes(r["saved_bytes"]), num(r["train_seconds"]),
                      num(r["train_samples_per_second"]), peak_memory(r), value])
    return markdown_table(header, cells)
