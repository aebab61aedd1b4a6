"""Peak memory (RSS) of LoRA training against full fine-tuning, MiniLM-L6 and ResNet-18, one subprocess each.

Each child process imports the libraries, builds the model, applies the strategy (the engine's
the strategy's `apply`, so LoRA runs `lora_fast`), makes the engine's optimizer (`Trainer.create_optimizer`)
and trains `--steps` steps on fixed batches: MiniLM on the longest length-grouped SST-2 batch of 32
(the sampler puts it first, so it sets a run's peak), ResNet-18 (from its config, as offline) on a
batch of 32 random 224 px images. It reports RSS after imports, after building the model, and the
peak (`ru_maxrss`). The table splits the peak into the part every process pays (interpreter, torch,
transformers, the model's weights) and what training adds on top (activations kept for backward,
gradients, optimizer state), which is where LoRA and full fine-tuning differ. `lora-peft` is LoRA
through peft's own forward (before `lora_fast`), `lora` as the strategy trains now.

    python benchmarks/memory.py [--steps 3] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared" / "data" / "glue" / "SST-2"


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(model: str, strategy: str, steps: int) -> dict:
    sys.path.insert(0, str(ROOT))
    import logging

    import torch
    import transformers
    from transformers import Trainer, set_seed

    from sft_hub.strategies import parse_strategy
    from sft_hub.training_args import build_training_args

    logging.disable(logging.WARNING)
    transformers.logging.set_verbosity_error()
    import datasets

    datasets.disable_progress_bars()
    out = {"imports": rss_mb()}
    set_seed(0)
    if model == "minilm":
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from lora_step import sst2_batches

        from sft_hub.tasks import text

        batch = sst2_batches(SST2, 2000)[0]  # the longest batch: the sampler yields it first
        built = text.build_model(text.ModelConfig("embedded/all-MiniLM-L6-v2"), ["negative", "positive"])
        lora = {"name": "lora", "r": 8, "alpha": 16, "dropout": 0.1, "target_modules": ["query", "key", "value", "dense"]}
    else:
        from sft_hub.tasks import image

        built = image.build_model(image.ModelConfig("resnet18"), ["ants", "bees"])
        batch = {"pixel_values": torch.randn(32, 3, 224, 224), "labels": torch.randint(0, 2, (32,))}
        lora = {"name": "lora", "r": 16, "alpha": 16}  # the resnet family's default targets
    net = parse_strategy({"name": "full"} if strategy == "full" else lora).apply(built.model, built.info)
    if strategy == "lora-peft":  # peft's own forward: what the lora strategy ran before lora_fast
        from sft_hub import lora_fast

        lora_fast.uninstall(net)
    net.train()
    args = build_training_args({"learning_rate": 1e-4, "report_to": "none"}, Path(tempfile.mkdtemp()))
    optimizer = Trainer(model=net, args=args).create_optimizer()
    out["model built"] = rss_mb()
    for _ in range(steps):
        net(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    out["peak"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["trainable"] = sum(p.numel() for p in net.parameters() if p.requires_grad)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--repeats", type=int, default=1, help="child processes per (model, strategy); the median counts")
    p.add_argument("--child", nargs=2, metavar=("MODEL", "STRATEGY"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(*a.child, a.steps)))
        return
    models = ["minilm", "resnet18"] if (SST2 / "train.tsv").is_file() else ["resnet18"]
    results: dict[tuple[str, str], dict] = {}
    for model in models:
        runs: dict[str, list[dict]] = {"full": [], "lora-peft": [], "lora": []}
        for _ in range(a.repeats):
            for strategy in runs:
                cmd = [sys.executable, __file__, "--child", model, strategy, "--steps", str(a.steps)]
                done = subprocess.run(cmd, capture_output=True, text=True, check=True)
                runs[strategy].append(json.loads(done.stdout.strip().splitlines()[-1]))
        for strategy, items in runs.items():
            results[(model, strategy)] = {k: statistics.median(r[k] for r in items) for k in items[0]}
    print(f"peak RSS over {a.steps} training steps, one fresh process per row, median of {a.repeats}")
    print()
    print(f"| {'model':<8} | {'strategy':<9} | {'trainable params':>16} | {'after imports MB':>16} | {'model built MB':>14} | "
          f"{'peak MB':>8} | {'training adds MB':>16} | {'peak ratio lora/full':>20} | {'added ratio':>11} |")
    print(f"|{'-' * 10}|{'-' * 11}|{'-' * 18}|{'-' * 18}|{'-' * 16}|{'-' * 10}|{'-' * 18}|{'-' * 22}|{'-' * 13}|")
    for (model, strategy), r in results.items():
        full = results[(model, "full")]
        added, full_added = r["peak"] - r["model built"], full["peak"] - full["model built"]
        print(f"| {model:<8} | {strategy:<9} | {int(r['trainable']):>16,} | {r['imports']:>16.0f} | {r['model built']:>14.0f} | "
              f"{r['peak']:>8.0f} | {added:>16.0f} | {r['peak'] / full['peak']:>20.2f} | {added / full_added:>11.2f} |")


if __name__ == "__main__":
    main()
