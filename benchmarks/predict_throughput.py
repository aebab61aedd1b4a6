"""Prediction throughput: `sft-hub predict` against transformers' `pipeline` on the merged export of the same run.

For each modality, one short LoRA run is trained (its accuracy does not matter here: the adapter is
non-zero after a few steps, so merging is real work), then exported with `export_merged`. Both sides
predict the same inputs, in the same process, in alternating rounds (the best round of each counts, so
load from other jobs hits both alike):
- sft-hub: `inference.load_run` + `inference.predict` (what `sft-hub predict RUN --file ...` runs).
- pipeline: `transformers.pipeline(task, model=<merged export>)` on the same texts / PIL images, at its
  default batch size (1) and at sft-hub's batch size; the better of the two is the anchor.
Text: the first `--texts` SST-2 training sentences on the SST-2 recipe's LoRA (MiniLM-L6). Images:
`--images` photos of hymenoptera/val (repeated if needed) on a ResNet-18 (from its config) with LoRA; the
pipeline is given them decoded (PIL images, decoding untimed and printed), sft-hub predict their paths.
Times are CPU seconds of this process (`time.process_time`, one torch thread by default: on a shared
machine wall time mostly measures the other jobs; neither side uses worker processes). Loading is timed
apart from predicting; the ratio is on inputs/s of the prediction itself, and the
last column includes loading.

    HF_HUB_OFFLINE=1 python benchmarks/predict_throughput.py [--texts 2000] [--images 96] [--rounds 2] [--only text|image]
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"


def train_run(kind: str, tmp: Path) -> Path:
    from sft_hub.config import parse_recipe
    from sft_hub.engine import train

    training = {"output_dir": str(tmp / f"run_{kind}"), "max_steps": 3, "per_device_train_batch_size": 8, "learning_rate": 1e-2,
                "save_strategy": "no", "eval_strategy": "no", "seed": 42, "disable_tqdm": True, "report_to": "none"}
    if kind == "text":
        raw = {"task": "text_classification", "model": {"name_or_path": "embedded/all-MiniLM-L6-v2"},
               "data": {"glue": "sst2", "data_dir": str(DATA / "glue" / "SST-2"), "max_train_samples": 64, "max_eval_samples": 16},
               "strategy": {"name": "lora", "r": 8, "alpha": 16, "dropout": 0.1, "target_modules": ["query", "key", "value", "dense"]}}
    else:
        raw = {"task": "image_classification", "model": {"name_or_path": "resnet18"},
               "data": {"folder": str(DATA / "hymenoptera"), "train_split": "train", "eval_splits": ["val"],
                        "max_train_samples": 16, "max_eval_samples": 8},
               "strategy": {"name": "lora", "r": 16, "alpha": 16}}
    train(parse_recipe({**raw, "training": training}))
    return Path(training["output_dir"])


def inputs(kind: str, n: int) -> tuple[list, list[str], float]:
    """(pipeline inputs, sft-hub predict arguments, CPU seconds spent making the pipeline's inputs) for the same n items."""
    if kind == "text":
        with open(DATA / "glue" / "SST-2" / "train.tsv", newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
        texts = [r["sentence"] for r in rows[:n]]
        return texts, texts, 0.0
    from PIL import Image

    paths = sorted(str(p) for p in (DATA / "hymenoptera" / "val").rglob("*.jpg"))
    paths = (paths * (n // len(paths) + 1))[:n]
    start = time.process_time()
    images = [Image.open(p).convert("RGB") for p in paths]  # decoded here, outside the pipeline's timer
    return images, paths, time.process_time() - start


def sft_hub_side(run: Path, kind: str, args: list[str]) -> tuple[float, float, list[str]]:
    from sft_hub import inference

    start = time.process_time()
    loaded = inference.load_run(run)
    rows = loaded.task.read_inputs(loaded.info.recipe.data, args, None)
    loaded_at = time.process_time()
    out = inference.predict(loaded, rows)
    return loaded_at - start, time.process_time() - loaded_at, [o["label"] for o in out]


def pipeline_side(merged: Path, kind: str, items: list, batch_size: int) -> tuple[float, float, list[str]]:
    from transformers import pipeline

    start = time.process_time()
    if kind == "text":
        pipe = pipeline("text-classification", model=str(merged), device="cpu")
    else:
        from transformers import AutoConfig, TimmWrapperImageProcessor

        processor = TimmWrapperImageProcessor(pretrained_cfg=AutoConfig.from_pretrained(merged).pretrained_cfg)
        pipe = pipeline("image-classification", model=str(merged), image_processor=processor, device="cpu")
    loaded_at = time.process_time()
    out = pipe(items, batch_size=batch_size)
    return loaded_at - start, time.process_time() - loaded_at, [o[0]["label"] if isinstance(o, list) else o["label"] for o in out]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--texts", type=int, default=2000)
    p.add_argument("--images", type=int, default=96)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--only", choices=["text", "image"])
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU time stays honest when other jobs share the cores)")
    a = p.parse_args()
    logging.disable(logging.WARNING)
    import datasets
    import torch
    import transformers

    from sft_hub.export import export_merged
    from sft_hub.fast_predict import default_batch_size

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    torch.set_num_threads(a.threads)
    tmp = Path(tempfile.mkdtemp())
    table = []
    for kind, n in (("text", a.texts), ("image", a.images)):
        if a.only and kind != a.only:
            continue
        if not (DATA / ("glue/SST-2" if kind == "text" else "hymenoptera")).is_dir():
            print(f"skipped {kind}: no data under {DATA}")
            continue
        run = train_run(kind, tmp)
        merged = export_merged(run, tmp / f"merged_{kind}")["out"]
        items, args, decoding = inputs(kind, n)
        bs = default_batch_size("text_classification" if kind == "text" else "image_classification")
        sides = {"sft-hub predict": lambda: sft_hub_side(run, kind, args),
                 "pipeline, batch 1": lambda: pipeline_side(merged, kind, items, 1),
                 f"pipeline, batch {bs}": lambda: pipeline_side(merged, kind, items, bs)}
        best: dict[str, tuple[float, float]] = {}
        labels = {}
        for _ in range(a.rounds):
            for side, fn in sides.items():
                load, predict, labels[side] = fn()
                if side not in best or predict < best[side][1]:
                    best[side] = (load, predict)
        agree = min(sum(x == y for x, y in zip(labels["sft-hub predict"], v)) for v in labels.values())
        anchor = min((v[1] for k, v in best.items() if k.startswith("pipeline")))
        for side, (load, predict) in best.items():
            table.append((kind, side, n / predict, anchor / predict, n / (load + predict)))
        print(f"{kind}: {n} inputs, labels agree with sft-hub's on {agree}/{n} for every side")
        if decoding:  # sft-hub predict is given file paths and decodes inside its timer
            print(f"{kind}: the pipeline gets decoded PIL images; decoding them took {1000 * decoding / n:.1f} CPU ms each, not in its time")
    print(f"torch threads {torch.get_num_threads()}; best of {a.rounds} alternating rounds; the anchor is the faster pipeline")
    print()
    print(f"| {'modality':<8} | {'side':<18} | {'inputs/s (predict)':>18} | {'ratio to anchor':>15} | {'inputs/s incl. loading':>22} |")
    print(f"|{'-' * 10}|{'-' * 20}|{'-' * 20}|{'-' * 17}|{'-' * 24}|")
    for kind, side, rate, ratio, total in table:
        print(f"| {kind:<8} | {side:<18} | {rate:>18.1f} | {ratio:>15.2f} | {total:>22.1f} |")


if __name__ == "__main__":
    main()
