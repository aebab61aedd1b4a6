"""Shared test fixtures: offline always, tiny models built from configs, data written by the tests."""

from __future__ import annotations

import os
import random
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
# feature caches (linear probe, frozen cache of head / partial) go to a fresh folder, never the user's ~/.cache
os.environ["SFT_HUB_CACHE"] = __import__("tempfile").mkdtemp(prefix="sft-hub-test-cache-")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

POSITIVE = ["good", "great", "fine", "lovely", "superb", "nice"]
NEGATIVE = ["bad", "awful", "poor", "dreadful", "terrible", "weak"]
FILLER = ["the", "movie", "was", "a", "plot", "really", "very", "film", "book", "it", "is", "so", "\"quoted\"", "it's"]


def sentence(rng: random.Random, positive: bool, words: int = 6) -> str:
    body = [rng.choice(FILLER) for _ in range(words - 1)]
    body.insert(rng.randrange(words), rng.choice(POSITIVE if positive else NEGATIVE))
    return " ".join(body)


def write_tiny_bert(folder: Path, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """A 2-layer BERT encoder (no task head) with a word-level vocab covering the fixture sentences."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    words = sorted(set(POSITIVE + NEGATIVE + FILLER + ["quoted", "'", "\"", "s", "|"]))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=64)
    import torch

    torch.manual_seed(seed)
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert")


def write_sentiment_csv(folder: Path, n_train: int = 48, n_val: int = 16, seed: int = 0, sep: str = ",") -> dict[str, str]:
    import csv

    rng = random.Random(seed)
    files = {}
    for split, n in (("train", n_train), ("validation", n_val)):
        path = folder / f"{split}.{'tsv' if sep == chr(9) else 'csv'}"
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh, delimiter=sep)
            w.writerow(["review", "sentiment"])
            for i in range(n):
                pos = i % 2 == 0
                w.writerow([sentence(rng, pos), "pos" if pos else "neg"])
        files[split] = str(path)
    return files


@pytest.fixture()
def sentiment_files(tmp_path) -> dict[str, str]:
    return write_sentiment_csv(tmp_path)


def text_recipe(model_dir: Path, files: dict[str, str], out: Path, strategy: dict | None = None, **training) -> dict:
    return {
        "task": "text_classification",
        "model": {"name_or_path": str(model_dir), "dropout": 0.0},
        "data": {"source": "csv", "data_files": files, "text_columns": ["review"], "label_column": "sentiment", "max_length": 32},
        "strategy": strategy or {"name": "lora", "r": 4, "alpha": 8, "target_modules": ["query", "value"]},
        "training": {"output_dir": str(out), "max_steps": 6, "per_device_train_batch_size": 8, "per_device_eval_batch_size": 8,
                     "learning_rate": 5e-3, "logging_steps": 1, "save_strategy": "no", "seed": 7, "disable_tqdm": True, **training},
    }


FROZEN_ARGS = __import__("types").SimpleNamespace(world_size=1, n_gpu=0, per_device_eval_batch_size=8, dataloader_num_workers=0)


def prepared_frozen_cache(raw: dict, attention: str | None = None):
    """Data, model with the strategy applied (`attention`: its attention implementation), and the frozen cache's
    (train rows, collator, record) from `frozen_cache.prepare`."""
    from types import SimpleNamespace

    import torch

    from sft_hub.config import parse_recipe
    from sft_hub.frozen_cache import prepare
    from sft_hub.strategies import FitInputs
    from sft_hub.tasks import get_task

    recipe = parse_recipe(raw)
    task = get_task(recipe.task)
    data = task.load_data(recipe.data, 0)
    processor = task.load_processor(recipe.model)
    encoded = task.encode(data.splits, processor, recipe.data, recipe.model, data.train_split)
    collate = task.collator(processor, recipe.data)
    torch.manual_seed(0)
    built = task.build_model(recipe.model, data.labels)
    if attention:
        built.model.set_attn_implementation(attention)
    model = recipe.strategy.apply(built.model, built.info)
    inputs = FitInputs(task, recipe, data, encoded, processor, collate, built.info, FROZEN_ARGS)
    rows, cached_collate, record = prepare(recipe.strategy, model, built.info, inputs, FROZEN_ARGS)
    return SimpleNamespace(model=model, info=built.info, encoded=encoded[data.train_split], collate=collate,
                           rows=rows, cached_collate=cached_collate, record=record)
