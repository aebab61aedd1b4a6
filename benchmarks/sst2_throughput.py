"""SST-2 training throughput: the sft-hub recipe against a plain-Trainer baseline with `run_glue.py`'s defaults.

Baseline (as `run_glue.py` does by default): every example padded to 128 tokens (`pad_to_max_length`),
`default_data_collator`, random batches (no length grouping). sft-hub: the recipe's dynamic padding and
length-grouped batches. Same model (embedded MiniLM-L6), same data subset, same optimiser settings and
seed, measured in one run; the table gives training samples/s, the ratio, and dev accuracy of each.
A second table repeats the sft-hub run over several seeds with and without length grouping ("without"
sees the baseline's batches; only its dropout draws differ, their shape following the padded length):
the dev accuracy spread that seeds alone give, next to any effect of grouping.

    .venv/bin/python benchmarks/sst2_throughput.py [--train-samples 4000] [--strategies lora,full] [--seeds 42,43,44]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

LORA = {"name": "lora", "r": 8, "alpha": 16, "dropout": 0.1, "target_modules": ["query", "key", "value", "dense"]}
LR = {"lora": 1e-3, "full": 5e-5}


def recipe(data_dir: Path, strategy: str, out: Path, args, seed: int = 42, group: bool = True) -> dict:
    return {
        "task": "text_classification",
        "model": {"name_or_path": "embedded/all-MiniLM-L6-v2"},
        "data": {"glue": "sst2", "data_dir": str(data_dir), "max_length": 128, "max_train_samples": args.train_samples},
        "strategy": LORA if strategy == "lora" else {"name": "full"},
        "training": {"output_dir": str(out), "learning_rate": LR[strategy], "num_train_epochs": args.epochs,
                     "per_device_train_batch_size": 32, "per_device_eval_batch_size": 128, "warmup_steps": 0.06,
                     "weight_decay": 0.01, "save_strategy": "no", "logging_steps": 50, "seed": seed,
                     "group_by_length": group, "disable_tqdm": True},
    }


def run_sft_hub(data_dir: Path, strategy: str, tmp: Path, args, seed: int = 42, group: bool = True) -> tuple[float, float]:
    from sft_hub.config import parse_recipe
    from sft_hub.engine import train

    out = train(parse_recipe(recipe(data_dir, strategy, tmp / f"sft_hub_{strategy}_{seed}_{group}", args, seed, group)))
    return out["manifest"]["train"]["train_samples_per_second"], out["metrics"]["validation"]["eval_validation_accuracy"]


def run_baseline(data_dir: Path, strategy: str, tmp: Path, args) -> tuple[float, float]:
    """What run_glue.py does with its defaults: pad_to_max_length=True, max_seq_length=128."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments, default_data_collator, set_seed

    from sft_hub.base_model import resolve_source
    from sft_hub.tasks.glue import load_local

    source = resolve_source("embedded/all-MiniLM-L6-v2")
    splits = load_local("sst2", data_dir)
    train_rows = splits["train"].shuffle(seed=42).select(range(min(args.train_samples, len(splits["train"]))))
    tok = AutoTokenizer.from_pretrained(source)

    def encode(batch):
        return tok(batch["text_a"], padding="max_length", max_length=128, truncation=True)

    train_ds = train_rows.map(encode, batched=True, remove_columns=["text_a"])
    dev_ds = splits["validation"].map(encode, batched=True, remove_columns=["text_a"])
    set_seed(42)
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=2)
    if strategy == "lora":
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=LORA["target_modules"],
                                                 modules_to_save=["classifier"]))
    targs = TrainingArguments(output_dir=str(tmp / f"baseline_{strategy}"), learning_rate=LR[strategy], num_train_epochs=args.epochs,
                              per_device_train_batch_size=32, per_device_eval_batch_size=128, warmup_steps=0.06,
                              weight_decay=0.01, save_strategy="no", logging_steps=50, seed=42, report_to="none",
                              disable_tqdm=True, use_cpu=True, label_names=["labels"])
    trainer = Trainer(model=model, args=targs, train_dataset=train_ds, eval_dataset=dev_ds, data_collator=default_data_collator,
                      compute_metrics=lambda p: {"accuracy": float((np.argmax(p.predictions, -1) == p.label_ids).mean())})
    speed = trainer.train().metrics["train_samples_per_second"]
    return speed, trainer.evaluate()["eval_accuracy"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "glue" / "SST-2"))
    p.add_argument("--train-samples", type=int, default=4000)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--strategies", default="lora,full")
    p.add_argument("--no-baseline", action="store_true", help="skip the baseline table (only with --seeds)")
    p.add_argument("--seeds", default="", help="comma-separated seeds for the grouped-vs-ungrouped accuracy table (empty: skip)")
    args = p.parse_args()
    data_dir = Path(args.data_dir)
    if not (data_dir / "train.tsv").is_file():
        print(f"skipped: SST-2 not found at {data_dir} (pass --data-dir)")
        return
    import logging

    logging.getLogger("sft_hub").setLevel(logging.ERROR)
    rows, seed_rows = [], []
    seeds = [int(s) for s in args.seeds.split(",") if s]
    with tempfile.TemporaryDirectory() as tmp:
        for strategy in args.strategies.split(","):
            ours_speed, ours_acc = run_sft_hub(data_dir, strategy, Path(tmp), args)
            if not args.no_baseline:
                base_speed, base_acc = run_baseline(data_dir, strategy, Path(tmp), args)
                rows.append((strategy, base_speed, ours_speed, base_acc, ours_acc))
            for seed in seeds:
                flat = run_sft_hub(data_dir, strategy, Path(tmp), args, seed, group=False)
                grouped = (ours_speed, ours_acc) if seed == 42 else run_sft_hub(data_dir, strategy, Path(tmp), args, seed)
                seed_rows.append((strategy, seed, flat, grouped))
    if rows:
        print(f"\nSST-2, embedded MiniLM-L6, {args.train_samples} training sentences x {args.epochs:g} epoch, batch 32, "
          f"{os.cpu_count()} CPU cores; dev = 872 sentences")
        print(f"| strategy | run_glue defaults (samples/s) | sft-hub recipe (samples/s) | speed-up | dev acc baseline | dev acc sft-hub |")
        print("|---|---:|---:|---:|---:|---:|")
    for strategy, b, o, ba, oa in rows:
        print(f"| {strategy} | {b:.1f} | {o:.1f} | {o / b:.2f}x | {ba:.4f} | {oa:.4f} |")
    if seed_rows:
        print("\nsft-hub, dynamic padding, over seeds: without / with length grouping")
        print("| strategy | seed | samples/s without | samples/s with | dev acc without | dev acc with |")
        print("|---|---:|---:|---:|---:|---:|")
        for strategy, seed, (fs, fa), (gs, ga) in seed_rows:
            print(f"| {strategy} | {seed} | {fs:.1f} | {gs:.1f} | {fa:.4f} | {ga:.4f} |")
        for strategy in args.strategies.split(","):
            flat = [r[2][1] for r in seed_rows if r[0] == strategy]
            grouped = [r[3][1] for r in seed_rows if r[0] == strategy]
            print(f"| {strategy} | mean | | | {np.mean(flat):.4f} +- {np.std(flat):.4f} | {np.mean(grouped):.4f} +- {np.std(grouped):.4f} |")


if __name__ == "__main__":
    main()
