"""Frozen computation done once (issue 13, aim 2): `head` and `partial` with and without the frozen cache.

SST-2 on the embedded MiniLM-L6 through the real engine (`sft_hub.engine.train`): the first `--n` training
sentences, `--epochs` epochs of length-grouped batches of 32, then the 872 dev sentences. For each seed, four
runs in this order: partial (top 2 of 6 blocks + pooler + head) without the cache (the anchor), partial with
it, head without, head with; `--whole-last-block` adds a partial run with the cache but the last block run
whole (`frozen_cache.CLS_ONLY` off), which splits partial's speed-up into the cache's and the [CLS]-only block's. Every cached run starts from an empty cache folder, so its first epoch pays for
extraction (the manifest's `frozen_cache.extract_*` is added to epoch 1). Per-epoch times come from a
callback (wall and CPU time of this process: on cores shared with other jobs, wall time mostly measures them);
torch runs on one thread. The table gives epoch 1 and the mean of later epochs, the later-epoch speed-up
against the anchor of the same seed (median over seeds), and dev accuracy mean +- std over seeds.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/frozen_cache.py [--data-dir ../shared/data/glue/SST-2]
        [--n 2000] [--epochs 3] [--seeds 42,43,44] [--json runs.json]
    python benchmarks/frozen_cache.py --table-from a.json,b.json    # one table from seeds run in separate processes
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from transformers import TrainerCallback  # noqa: E402

MODEL = "embedded/all-MiniLM-L6-v2"
PATHS = {False: "uncached", True: "cached", "whole": "cached, whole last block"}
RUNS = [("partial", {"name": "partial", "n": 2}, 1e-4), ("head", {"name": "head"}, 5e-3)]


class EpochClock(TrainerCallback):
    """(wall, cpu) seconds of each epoch of training."""

    def __init__(self) -> None:
        self.epochs: list[tuple[float, float]] = []

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.start = (time.perf_counter(), time.process_time())

    def on_epoch_end(self, args, state, control, **kwargs):
        self.epochs.append((time.perf_counter() - self.start[0], time.process_time() - self.start[1]))


def run(data_dir: Path, n: int, epochs: int, seed: int, strategy: dict, lr: float, cached: bool | str, out: Path) -> dict:
    """One training; `cached`: False, True, or "whole" (the cache, with the last block run whole)."""
    from sft_hub import frozen_cache
    from sft_hub.config import parse_recipe
    from sft_hub.engine import train

    raw = {"task": "text_classification", "model": {"name_or_path": MODEL},
           "data": {"glue": "sst2", "data_dir": str(data_dir), "max_length": 128, "max_train_samples": n},
           "strategy": {**strategy, "cache_frozen": bool(cached)},
           "training": {"output_dir": str(out), "learning_rate": lr, "num_train_epochs": epochs, "per_device_train_batch_size": 32,
                        "per_device_eval_batch_size": 128, "warmup_steps": 0.06, "weight_decay": 0.01, "eval_strategy": "no",
                        "save_strategy": "no", "logging_steps": 50, "group_by_length": True, "seed": seed, "disable_tqdm": True,
                        "report_to": "none"}}
    clock = EpochClock()
    frozen_cache.CLS_ONLY = cached != "whole"
    try:
        with tempfile.TemporaryDirectory(prefix="frozen-cache-bench-") as cache:
            os.environ["SFT_HUB_CACHE"] = cache  # an empty cache: the cached run's first epoch includes extraction
            result = train(parse_recipe(raw), overwrite=True, callbacks=[clock])
    finally:
        frozen_cache.CLS_ONLY = True
    record = result["manifest"]["frozen_cache"]
    assert record["used"] == bool(cached), record
    epochs_ = [list(e) for e in clock.epochs]
    if cached:
        epochs_[0][0] += record["extract_seconds"]
        epochs_[0][1] += record["extract_cpu_seconds"]
    acc = result["metrics"]["validation"]["eval_validation_accuracy"]
    return {"epochs": epochs_, "acc": acc, "record": record}


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "glue" / "SST-2")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seeds", default="42,43,44")
    p.add_argument("--only", default="partial,head", help="strategies to run, comma-separated")
    p.add_argument("--json", type=Path, help="write every run's epochs and accuracy here after each seed")
    p.add_argument("--whole-last-block", action="store_true", help="also partial cached with the last block run whole")
    p.add_argument("--head-lr", type=float, default=dict((n, lr) for n, _, lr in RUNS)["head"], help="head's learning rate")
    p.add_argument("--table-from", help="print the table of earlier --json files (comma-separated; seeds run apart) and exit")
    a = p.parse_args()
    if a.table_from:
        merged: dict[tuple[str, bool | str], list[dict]] = {}
        for file in a.table_from.split(","):
            for k, v in json.loads(Path(file).read_text()).items():
                name, cached = k.split("/")
                merged.setdefault((name, {"True": True, "False": False}.get(cached, cached)), []).extend(v)
        return table(merged)
    if not (a.data_dir / "train.tsv").is_file():
        sys.exit(f"error: --data-dir {a.data_dir}: no SST-2 train.tsv there")
    import torch

    torch.set_num_threads(1)
    logging.getLogger("sft_hub").setLevel(logging.ERROR)
    seeds = [int(s) for s in a.seeds.split(",")]
    wanted = a.only.split(",")
    results: dict[tuple[str, bool | str], list[dict]] = {}
    start, load0 = time.perf_counter(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="frozen-cache-runs-") as runs:
        for seed in seeds:
            for name, strategy, lr in RUNS:
                if name not in wanted:
                    continue
                for cached in (False, "whole", True) if name == "partial" and a.whole_last_block else (False, True):
                    lr = a.head_lr if name == "head" else lr
                    r = run(a.data_dir, a.n, a.epochs, seed, strategy, lr, cached, Path(runs) / f"{name}-{cached}-{seed}")
                    results.setdefault((name, cached), []).append(r)
                    print(f"seed {seed} {name:8s} {PATHS[cached]:8s} epochs (wall, cpu) s: "
                          + ", ".join(f"({w:.1f}, {c:.1f})" for w, c in r["epochs"]) + f"  dev acc {r['acc']:.4f}", flush=True)
            if a.json:
                a.json.write_text(json.dumps({f"{k[0]}/{k[1]}": v for k, v in results.items()}, indent=1, default=str))
            done = seeds[:seeds.index(seed) + 1]  # the table so far: a run cut short still reports what it measured
            print(f"\nSST-2, {a.n} training sentences, {a.epochs} epochs, batch 32, MiniLM-L6, 1 torch thread, seeds "
                  f"{','.join(map(str, done))}; {time.perf_counter() - start:.0f} s so far; load average {load0:.1f} at the "
                  f"start, {os.getloadavg()[0]:.1f} now")
            table(results)


def table(results: dict) -> None:
    print("| strategy | path | epoch 1 wall / CPU s | later epochs wall / CPU s | later epochs speed-up, CPU (wall) | dev accuracy |")
    print("|---|---|---:|---:|---:|---:|")
    for name, _, _ in RUNS:
        for cached in (False, "whole", True):
            rs = results.get((name, cached))
            if not rs:
                continue
            e1w, e1c = mean([r["epochs"][0][0] for r in rs]), mean([r["epochs"][0][1] for r in rs])
            lw = mean([mean([e[0] for e in r["epochs"][1:]]) for r in rs])
            lc = mean([mean([e[1] for e in r["epochs"][1:]]) for r in rs])
            speed = "1.0x (anchor)"
            if cached:
                anchors = results[(name, False)]
                cpu = statistics.median(mean([e[1] for e in u["epochs"][1:]]) / mean([e[1] for e in r["epochs"][1:]])
                                        for u, r in zip(anchors, rs))
                wall = statistics.median(mean([e[0] for e in u["epochs"][1:]]) / mean([e[0] for e in r["epochs"][1:]])
                                         for u, r in zip(anchors, rs))
                speed = f"**{cpu:.1f}x** ({wall:.1f}x)"
            accs = [r["acc"] for r in rs]
            spread = f" +- {statistics.stdev(accs):.3f}" if len(accs) > 1 else ""
            print(f"| {name} | {PATHS[cached]} | {e1w:.1f} / {e1c:.1f} | {lw:.1f} / {lc:.1f} | {speed} | "
                  f"{mean(accs):.3f}{spread} |")


if __name__ == "__main__":
    main()
