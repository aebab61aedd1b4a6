"""Transfer across strategies on a from-scratch task: train a base on half of the classes, fine-tune on the other half.

Issue 10's proof for the image (digits) and speech (FSDD) tasks, which have no pretrained base offline: a
probe or adapter of a *random* base measures the architecture's random features, not transfer. So this
script trains a base with `full` on classes 0-4, exports it (`sft-hub export --merge`) as a local model
folder, and fine-tunes that folder on classes 5-9 with every strategy; the same strategies on the untrained
base (the recipe's from-scratch model) give the floor that transfer has to beat. Every step is an
ordinary `sft-hub` command (printed before it runs), timed in wall-clock seconds around the whole process.

    python benchmarks/transfer_strategies.py --task digits --out /tmp/transfer/digits
    python benchmarks/transfer_strategies.py --task fsdd --out /tmp/transfer/fsdd --data ../shared/data/fsdd/recordings

Prints a markdown table: base, strategy, trainable params, saved bytes (the run's strategy folder), wall
time and test accuracy (the held-out split of classes 5-9). Outputs go under --out; existing finished
runs are reused (delete them to rerun).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPLIT = (("a", "01234"), ("b", "56789"))  # the base learns part a; every strategy learns part b
PEFT_LR = "1.0e-2"  # adapters and heads on a small net learn faster than the recipe's full-fine-tuning rate

# name -> (strategy override, learning rate or None for the recipe's)
STRATEGIES = {
    "full": ("strategy=full", None),
    "head": ("strategy=head", PEFT_LR),
    "partial n=1": ("strategy={name: partial, n: 1}", None),
    "partial n=2": ("strategy={name: partial, n: 2}", None),
    "lora r=8": ("strategy={name: lora, r: 8, alpha: 16}", PEFT_LR),
    "loha r=8": ("strategy={name: loha, r: 8, alpha: 16}", PEFT_LR),
    "lokr r=8": ("strategy={name: lokr, r: 8, alpha: 16}", PEFT_LR),
    "ia3": ("strategy={name: ia3}", PEFT_LR),
    "adalora r=8": ("strategy={name: adalora, r: 8, alpha: 16}", PEFT_LR),
    "boft": ("strategy={name: boft}", PEFT_LR),
    "linear_probe": ("strategy=linear_probe", None),
}

TASKS = {
    "digits": {"recipe": "recipes/image_classification/digits_resnet18_full.yaml", "random": ["model.name_or_path=resnet18"], "trained": [],
               "base_epochs": 12, "epochs": 8},
    "fsdd": {"recipe": "recipes/audio_classification/fsdd_ast_scratch_full.yaml", "random": [],
             "trained": ["model.config=null"],  # the architecture comes from the base's config.json
             "base_epochs": 20, "epochs": 10},
}


def sft_hub(*args: str) -> float:
    """Run one `sft-hub` command; its wall time in seconds. Fails loudly: a table of half-run rows would mislead."""
    cmd = [sys.executable, "-m", "sft_hub", *args]
    print("$ sft-hub " + " ".join(a if " " not in a else repr(a) for a in args), file=sys.stderr, flush=True)
    start = time.monotonic()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.monotonic() - start


def digits_folders(out: Path) -> dict[str, Path]:
    """sklearn's digits with the recipe's own fixed train/test split, as two class-folder trees (classes 0-4, 5-9)."""
    from sft_hub.tasks.image_data import load_digits_splits

    splits = load_digits_splits()
    roots = {part: out / f"data_{part}" for part, _ in SPLIT}
    for part, classes in SPLIT:
        for split, ds in splits.items():
            for i, row in enumerate(ds):
                if row["raw_label"] in classes:
                    path = roots[part] / split / row["raw_label"] / f"{i}.png"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(row["image"]["bytes"])
    return roots


def data_overrides(task: str, part: str, roots: dict[str, Path], fsdd: str) -> list[str]:
    if task == "digits":
        return ["data.builtin=null", f"data.folder={roots[part]}"]
    classes = dict(SPLIT)[part]
    return [f"data.data_dir={fsdd}", f"data.file_glob=\"[{classes[0]}-{classes[-1]}]_*.wav\""]


def saved_bytes(run: Path, saved_as: str) -> int:
    folder = run / saved_as
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def run_row(spec: dict, run: Path, base_args: list[str], data: list[str], name: str, epochs: int, train: bool = True) -> dict | None:
    strategy, lr = STRATEGIES[name]
    manifest = run / "manifest.json"
    wall = None
    if not manifest.is_file() and not train:
        return None
    if not manifest.is_file():
        args = ["train", spec["recipe"], *base_args, *data, strategy, f"training.output_dir={run}",
                f"training.num_train_epochs={epochs}", "training.eval_strategy=no", "training.save_strategy=no",
                "engine.report=false", *([f"training.learning_rate={lr}"] if lr else [])]
        wall = sft_hub(*args)
        (run / "wall_seconds.txt").write_text(f"{wall:.1f}\n")
    elif (run / "wall_seconds.txt").is_file():
        wall = float((run / "wall_seconds.txt").read_text())
    m = json.loads(manifest.read_text())
    metrics = next(iter(m["metrics"].values()))
    accuracy = next(v for k, v in metrics.items() if k.endswith("_accuracy"))
    return {"strategy": name, "trainable": m["parameters"]["trainable"], "total": m["parameters"]["total"],
            "saved": saved_bytes(run, m["saved_as"]), "saved_as": m["saved_as"], "wall": wall, "accuracy": accuracy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=sorted(TASKS), default="digits")
    parser.add_argument("--out", type=Path, default=Path("/tmp/transfer/digits"))
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/fsdd/recordings"), help="FSDD recordings/ folder")
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated names from: " + ", ".join(STRATEGIES))
    parser.add_argument("--bases", default="trained,random")
    parser.add_argument("--epochs", type=int, help="epochs of each strategy run (default: per task)")
    parser.add_argument("--table-only", action="store_true", help="train nothing: the table of the runs already finished under --out")
    opts = parser.parse_args()
    spec, out = TASKS[opts.task], opts.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    roots = digits_folders(out) if opts.task == "digits" else {}

    base_run, base_model = out / "base_run", out / "base_model"
    if "trained" in opts.bases.split(",") and not opts.table_only:
        if not (base_run / "manifest.json").is_file():
            wall = sft_hub("train", spec["recipe"], *data_overrides(opts.task, "a", roots, opts.data), f"training.output_dir={base_run}",
                           f"training.num_train_epochs={spec['base_epochs']}", "training.eval_strategy=no",
                           "training.save_strategy=no", "engine.report=false")
            (base_run / "wall_seconds.txt").write_text(f"{wall:.1f}\n")
        if not (base_model / "config.json").is_file():
            sft_hub("export", str(base_run), "--merge", "--out", str(base_model))
        m = json.loads((base_run / "manifest.json").read_text())
        acc = next(v for k, v in next(iter(m["metrics"].values())).items() if k.endswith("_accuracy"))
        print(f"base: full on classes {dict(SPLIT)['a']}, {spec['base_epochs']} epochs: test accuracy {acc:.4f}, "
              f"{float((base_run / 'wall_seconds.txt').read_text()):.0f} s wall")

    rows = []
    epochs = opts.epochs or spec["epochs"]
    data = data_overrides(opts.task, "b", roots, opts.data)
    for base in opts.bases.split(","):
        base_args = [f"model.name_or_path={base_model}", *spec["trained"]] if base == "trained" else spec["random"]
        for name in filter(None, opts.strategies.split(",")):
            tag = name.replace(" ", "_").replace("=", "")
            row = run_row(spec, out / f"{base}_{tag}", base_args, data, name, epochs, train=not opts.table_only)
            if row is None:
                continue
            rows.append({"base": base, **row})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    print_table(rows, opts.bases.split(","))


def print_table(rows: list[dict], bases: list[str]) -> None:
    """One line per strategy, the bases side by side (trainable and saved sizes are the first base's run)."""
    by = {(r["base"], r["strategy"]): r for r in rows}
    names = list(dict.fromkeys(r["strategy"] for r in rows))
    head = " | ".join(f"{b} base: wall | {b} base: test accuracy" for b in bases)
    print(f"\n| strategy | trainable params | saved | {head} |")
    print("|---|---:|---:|" + "---:|---:|" * len(bases))
    for name in names:
        first = next(by[(b, name)] for b in bases if (b, name) in by)
        cells = []
        for b in bases:
            r = by.get((b, name))
            cells += ["-", "-"] if r is None else [f"{r['wall']:.0f} s" if r["wall"] is not None else "?", f"{r['accuracy']:.4f}"]
        print(f"| {name} | {first['trainable']:,} | {first['saved']:,} B (`{first['saved_as']}/`) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
