"""The offline demo: LoRA on the embedded MiniLM with the built-in sentiment set, then reload and predict."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from datasets import Dataset

from sft_hub.config import load_recipe
from sft_hub.console import train_summary
from sft_hub.engine import train
from sft_hub.inference import evaluate, load_run, logits, predict

SENTENCES = [
    "An absolute delight from start to finish, I would go back tomorrow.",
    "The battery died after two days and support never answered.",
    "Not bad at all for the price, honestly.",
    "I wanted to like it, but the plot goes nowhere.",
]


def run_demo(recipe_path: Path, output_dir: str, overrides: list[str]) -> None:
    recipe = load_recipe(recipe_path, [f"training.output_dir={output_dir}", *overrides])
    overwrite = _own_demo_run(Path(output_dir), recipe)
    print(f"[1/4] training {recipe.description or recipe_path.name}")
    start = time.perf_counter()
    out = train(recipe, overwrite=overwrite)
    if out["stopped"]:  # SIGTERM: a checkpoint was saved; the same command resumes
        print(f"      stopped by SIGTERM; run the same command to resume from {out['run_dir']}")
        return
    for line in train_summary(out, time.perf_counter() - start):
        print(f"      {line.strip()}")

    print("[2/4] reloading the run directory (base fingerprint checked)")
    loaded = load_run(out["run_dir"])
    print("[3/4] evaluating the reloaded model on the held-out split")
    for split, metrics in evaluate(loaded).items():
        trained = out["metrics"][split][f"eval_{split}_accuracy"]
        print(f"      {split}: accuracy {metrics['accuracy']:.3f} (at the end of training: {trained:.3f}), "
              f"macro F1 {metrics['f1_macro']:.3f}, n={metrics['num_examples']}")
    rows = Dataset.from_dict({"text_a": SENTENCES})
    again = logits(load_run(out["run_dir"]), rows)
    same = np.allclose(logits(loaded, rows), again, atol=1e-6)
    print(f"[4/4] predictions (two independent reloads agree: {same})")
    for item in predict(loaded, rows):
        print(f"      {item['label']:<9} {item['score']:.3f}  {item['input']}")


def _own_demo_run(folder: Path, recipe) -> bool:
    """The demo replaces only an earlier demo run (same description and data); any other folder is refused."""
    import yaml

    from sft_hub import runs
    from sft_hub.errors import RunError
    from sft_hub.lock import LOCK

    if not folder.exists() or not any(p.name != LOCK for p in folder.iterdir()):
        return False
    try:
        previous = yaml.safe_load((folder / runs.RECIPE).read_text()) or {}
    except (OSError, yaml.YAMLError):
        previous = {}
    if previous.get("description") != recipe.description or previous.get("data") != recipe.raw.get("data"):
        raise RunError(f"demo --output-dir {folder}: the folder is not empty and holds no sft-hub demo run; "
                       "refusing to empty it: choose another --output-dir")
    return True
