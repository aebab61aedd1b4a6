"""Images/s of sft-hub's image input pipeline and of a training epoch, against timm's own loader.

Both sides read the same photos (default: the ants-vs-bees train split, ../shared/data/hymenoptera/train,
245 JPEGs of many sizes) with the same timm train transforms built from the model's data config
(224 px random-resized crop, flip, colour jitter, bicubic, ImageNet mean/std), the recipe's batch size,
worker count and worker persistence, and train the same model (a timm architecture from its config,
same initial weights) in the same plain training loop. sft-hub's side is exactly what the recipe's
Trainer iterates (default recipe: hymenoptera_resnet18_lora.yaml, with the model built from config):
`image.load_data` -> `encode` (Dataset.with_transform) -> `collator`, via `Trainer.get_train_dataloader`;
timm's side is `timm.data.create_dataset` + `timm.data.create_loader` (no CUDA prefetcher on CPU).
Rounds alternate sft-hub / timm and the best round of each counts, so load from other jobs on the
machine hits both alike. Run from the repository root:

    HF_HUB_OFFLINE=1 python benchmarks/image_throughput.py [--data-dir DIR] [--workers 2] [--rounds 3] [--train-rounds 1]
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(ROOT / ".." / "shared" / "data" / "hymenoptera"),
                   help="image folder with train/<class>/* (default: ../shared/data/hymenoptera)")
    p.add_argument("--recipe", default=str(ROOT / "recipes" / "image_classification" / "hymenoptera_resnet18_lora.yaml"),
                   help="recipe whose input pipeline is measured (its batch size and DataLoader settings apply to both sides)")
    p.add_argument("--model", default="resnet18", help="timm architecture, built from its config (no weights needed)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=None, help="default: the recipe's")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers on both sides (default: the recipe's)")
    p.add_argument("--rounds", type=int, default=3, help="alternating input-pipeline rounds; the best counts")
    p.add_argument("--train-rounds", type=int, default=1, help="alternating training-epoch rounds; the best counts")
    p.add_argument("--pipeline-epochs", type=int, default=2, help="passes over the data per input-pipeline round")
    p.add_argument("--skip-training", action="store_true", help="measure the input pipelines only")
    return p.parse_args()


def sft_hub_loader(recipe_path: str, folder: Path, model_name: str, size: int, batch: int | None, workers: int | None):
    """The recipe's own Trainer dataloader (its batch size, workers, persistence), on `model_name` built from config."""
    from transformers import Trainer

    from sft_hub.config import load_recipe
    from sft_hub.tasks import image
    from sft_hub.training_args import build_training_args

    overrides = [f"data.folder={folder}", f"model.name_or_path={model_name}", f"model.image_size={size}", "strategy=full",
                 f"training.output_dir={tempfile.mkdtemp()}", "data.eval_splits=[]", 'training.eval_strategy="no"']
    overrides += [f"training.per_device_train_batch_size={batch}"] * (batch is not None)
    overrides += [f"training.dataloader_num_workers={workers}"] * (workers is not None)
    recipe = load_recipe(recipe_path, overrides)
    data = image.load_data(recipe.data, seed=0)
    processor = image.load_processor(recipe.model)
    encoded = image.encode(data.splits, processor, recipe.data, recipe.model, data.train_split)
    args = build_training_args(dict(recipe.training), recipe.output_dir, remove_unused_columns=False)
    trainer = Trainer(model=image.build_model(recipe.model, data.labels).model, args=args, train_dataset=encoded[data.train_split],
                      data_collator=image.collator(processor, recipe.data))
    return trainer.get_train_dataloader(), processor.data_config, data.labels, args, recipe.model


def timm_loader(folder: Path, data_config: dict, batch: int, workers: int, persistent: bool):
    import torch
    from timm.data import create_dataset, create_loader

    dataset = create_dataset("", root=str(folder / "train"), split="train", is_training=True)
    loader = create_loader(dataset, input_size=data_config["input_size"], batch_size=batch, is_training=True, use_prefetcher=False,
                           interpolation=data_config["interpolation"], mean=data_config["mean"], std=data_config["std"],
                           crop_pct=data_config["crop_pct"], num_workers=workers, device=torch.device("cpu"),
                           persistent_workers=persistent and workers > 0)
    return loader


def batches(loader):
    """(pixel_values, labels) from either loader: sft-hub gives dicts, timm gives (input, target) tuples."""
    for b in loader:
        yield (b["pixel_values"], b["labels"]) if isinstance(b, dict) else (b[0], b[1])


def pipeline_rate(loader, epochs: int) -> float:
    n, start = 0, time.perf_counter()
    for _ in range(epochs):
        for x, _ in batches(loader):
            n += len(x)
    return n / (time.perf_counter() - start)


def training_rate(loader, model, lr: float = 0.01) -> float:
    import torch

    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    n, start = 0, time.perf_counter()
    for x, y in batches(loader):
        loss = torch.nn.functional.cross_entropy(model(pixel_values=x).logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        n += len(x)
    return n / (time.perf_counter() - start)


def main() -> None:
    a = parse_args()
    folder = Path(a.data_dir).resolve()
    if not (folder / "train").is_dir():
        print(f"skipped: no image folder at {folder} (expected train/<class>/*.jpg; pass --data-dir)")
        return
    logging.disable(logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from sft_hub.tasks import image

    ours, data_config, labels, args, model_cfg = sft_hub_loader(a.recipe, folder, a.model, a.image_size, a.batch_size, a.workers)
    batch, workers, persistent = args.per_device_train_batch_size, args.dataloader_num_workers, args.dataloader_persistent_workers
    theirs = timm_loader(folder, data_config, batch, workers, persistent)
    print(f"{a.model} at {a.image_size} px, {len(ours.dataset)} training images from {folder}, batch {batch}, {workers} workers "
          f"(persistent: {persistent}), torch threads {torch.get_num_threads()}; best of {a.rounds} (pipeline) / "
          f"{a.train_rounds} (training) alternating rounds")
    print(f"data config: {data_config}")

    results: dict[str, dict[str, float]] = {"input pipeline": {}, "training epoch": {}}
    for _ in range(a.rounds):
        for name, loader in (("sft-hub", ours), ("timm", theirs)):
            rate = pipeline_rate(loader, a.pipeline_epochs)
            results["input pipeline"][name] = max(rate, results["input pipeline"].get(name, 0.0))
    if not a.skip_training:
        torch.manual_seed(0)
        initial = image.build_model(model_cfg, labels).model
        for _ in range(a.train_rounds):
            for name, loader in (("sft-hub", ours), ("timm", theirs)):
                rate = training_rate(loader, copy.deepcopy(initial))
                results["training epoch"][name] = max(rate, results["training epoch"].get(name, 0.0))

    print()
    print(f"| {'measurement':<16} | {'sft-hub img/s':>13} | {'timm loader img/s':>17} | {'ratio (sft-hub / timm)':>22} |")
    print(f"|{'-' * 18}|{'-' * 15}|{'-' * 19}|{'-' * 24}|")
    for what, row in results.items():
        if row:
            print(f"| {what:<16} | {row['sft-hub']:>13.1f} | {row['timm']:>17.1f} | {row['sft-hub'] / row['timm']:>22.2f} |")


if __name__ == "__main__":
    main()
