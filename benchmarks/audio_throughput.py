"""Clips/s of sft-hub's audio input pipeline and training, against a plain Trainer set up like transformers'
`examples/pytorch/audio-classification/run_audio_classification.py`, on FSDD, in one run.

Both sides read the same clips (default: FSDD's 2700-clip training split, ../shared/data/fsdd/recordings),
use the same feature extractor, batch size, Trainer arguments and model (the recipe's, built from its
config with the same initial weights), on the same number of torch threads.
- sft-hub: exactly what the recipe's run iterates: `audio.load_data` (split, labels, every file's header
  checked) -> `encode` (decode + resample once, features cached by `datasets`) -> `collator`.
- baseline: the example script's preprocessing: `cast_column(Audio(sampling_rate=...))` and a
  `set_transform` that decodes, random-subsamples to `max_length_seconds` (its default, 20 s, unless the
  recipe sets max_duration) and runs the feature extractor on every access, every epoch;
  `processing_class=feature_extractor` (Trainer's DataCollatorWithPadding).
Rows: the first pass over the data (sft-hub's includes its checks and caching), each later pass, and
training (Trainer.train, `--epochs` epochs, sft-hub's preparation counted in). Rounds alternate the two
sides and the best round of each counts, so load from other jobs on the machine hits both alike.
Times are CPU seconds of this process (`time.process_time`, one torch thread by default; the recipe
uses no DataLoader workers): on a shared machine wall time mostly measures the other jobs.
Run from the repository root:

    HF_HUB_OFFLINE=1 python benchmarks/audio_throughput.py [--data-dir DIR] [--rounds 2] [--epochs 2]
"""

from __future__ import annotations

import argparse
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
    p.add_argument("--data-dir", default=str(ROOT / ".." / "shared" / "data" / "fsdd" / "recordings"),
                   help="FSDD recordings folder ({digit}_{speaker}_{index}.wav; default: ../shared/data/fsdd/recordings)")
    p.add_argument("--recipe", default=str(ROOT / "recipes" / "audio_classification" / "fsdd_ast_scratch_full.yaml"))
    p.add_argument("--rounds", type=int, default=2, help="alternating input-pipeline rounds; the best counts")
    p.add_argument("--epochs", type=int, default=2, help="training epochs per side (one round)")
    p.add_argument("--skip-training", action="store_true", help="measure the input pipelines only")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU time stays honest when other jobs share the cores)")
    p.add_argument("--check-clips", type=int, default=300, help="clips whose decoded samples are compared with FFmpeg's")
    return p.parse_args()


def training_args(recipe, epochs: int):
    from sft_hub.training_args import build_training_args

    training = {**recipe.training, "num_train_epochs": epochs, "eval_strategy": "no", "save_strategy": "no",
                "logging_strategy": "no", "disable_tqdm": True}
    training.pop("save_total_limit", None)
    return build_training_args(training, Path(tempfile.mkdtemp()), remove_unused_columns=False)


def sft_hub_side(recipe):
    """(train dataset, collator) exactly as the engine builds them."""
    from sft_hub.tasks import audio

    data = audio.load_data(recipe.data, seed=42)
    fe = audio.load_processor(recipe.model)
    encoded = audio.encode(data.splits, fe, recipe.data, recipe.model, data.train_split)
    return encoded[data.train_split], audio.collator(fe, recipe.data)


def baseline_side(recipe, paths: list[str], label_ids: list[int]):
    """run_audio_classification.py's train split: lazy decode + random subsample + features on every access."""
    from random import randint

    from datasets import Audio, Dataset

    from sft_hub.tasks import audio

    fe = audio.load_processor(recipe.model)
    max_length_seconds = recipe.data.max_duration or 20.0  # the script's --max_length_seconds default

    def random_subsample(wav, max_length, sample_rate=16000):  # as in the example script
        sample_length = int(round(sample_rate * max_length))
        if len(wav) <= sample_length:
            return wav
        random_offset = randint(0, len(wav) - sample_length - 1)
        return wav[random_offset: random_offset + sample_length]

    def train_transforms(batch):
        wavs = [random_subsample(a["array"], max_length_seconds, fe.sampling_rate) for a in batch["audio"]]
        inputs = fe(wavs, sampling_rate=fe.sampling_rate)
        return {fe.model_input_names[0]: inputs.get(fe.model_input_names[0]), "labels": list(batch["label"])}

    ds = Dataset.from_dict({"audio": paths, "label": label_ids}).cast_column("audio", Audio(sampling_rate=fe.sampling_rate))
    ds.set_transform(train_transforms, output_all_columns=False)
    return ds, fe


def passes(loader, count: int) -> list[float]:
    """Seconds for each of `count` passes over a DataLoader."""
    out = []
    for _ in range(count):
        start = time.process_time()
        for _batch in loader:
            pass
        out.append(time.process_time() - start)
    return out


def pipeline_round(make, args, extra_key: str, times: list[tuple[float, float]]):
    """One side's round: `make()` -> (train dataset, extra), the Trainer's train DataLoader (extra passed as
    `extra_key`) iterated twice. Appends (setup + first pass, second pass) seconds to `times`; returns
    (dataset, extra, setup seconds) for the training measurement."""
    import torch
    from transformers import Trainer

    start = time.process_time()
    ds, extra = make()
    setup = time.process_time() - start
    loader = Trainer(model=torch.nn.Linear(1, 1), args=args, train_dataset=ds, **{extra_key: extra}).get_train_dataloader()
    first, second = passes(loader, 2)
    times.append((setup + first, second))
    return ds, extra, setup


def identical_decoding(paths: list[str], recipe) -> str:
    """How many clips sft-hub's decoding (libsndfile for 16-bit PCM at the target rate) gives exactly as FFmpeg does."""
    import numpy as np
    from datasets import Audio

    from sft_hub.tasks import audio, audio_data

    rate = audio.load_processor(recipe.model).sampling_rate
    same = sum(np.array_equal(audio_data.decode(p, rate)[0], np.asarray(Audio(sampling_rate=rate).decode_example({"path": p, "bytes": None})["array"], dtype=np.float32))
               for p in paths)
    return f"{same}/{len(paths)}"


def main() -> None:
    a = parse_args()
    folder = Path(a.data_dir).resolve()
    if not folder.is_dir() or not any(folder.glob("*.wav")):
        print(f"skipped: no FSDD recordings at {folder} (pass --data-dir)")
        return
    logging.disable(logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import Trainer

    from sft_hub.config import load_recipe
    from sft_hub.losses import make_loss
    from sft_hub.tasks import audio

    torch.set_num_threads(a.threads)
    recipe = load_recipe(a.recipe, [f"data.data_dir={folder}", f"training.output_dir={tempfile.mkdtemp()}"])
    args = training_args(recipe, a.epochs)
    times: dict[str, list[tuple[float, float]]] = {"sft-hub": [], "baseline": []}  # (setup + first pass, a later pass) per round
    prepared = {}
    for _ in range(a.rounds):
        prepared["sft-hub"] = pipeline_round(lambda: sft_hub_side(recipe), args, "data_collator", times["sft-hub"])
        paths = [v["path"] for v in audio.load_data(recipe.data, seed=42).splits["train"]["audio"]]
        ids = [int(Path(p).name.split("_")[0]) for p in paths]
        prepared["baseline"] = pipeline_round(lambda: baseline_side(recipe, paths, ids), args, "processing_class", times["baseline"])

    n = len(prepared["sft-hub"][0])
    same = identical_decoding(paths[:a.check_clips], recipe)
    rows = {"input pipeline, first pass": {k: n / min(t[0] for t in v) for k, v in times.items()},
            "input pipeline, later passes": {k: n / min(t[1] for t in v) for k, v in times.items()}}
    if not a.skip_training:
        rates = {}
        for side in ("sft-hub", "baseline"):
            model = audio.build_model(recipe.model, [str(d) for d in range(10)]).model  # same seeded initial weights
            ds, extra, setup = prepared[side]
            kwargs = {"data_collator": extra, "compute_loss_func": make_loss("single_label")} if side == "sft-hub" else {"processing_class": extra}
            trainer = Trainer(model=model, args=args, train_dataset=ds, **kwargs)
            start = time.process_time()
            trainer.train()
            rates[side] = a.epochs * n / (time.process_time() - start + (setup if side == "sft-hub" else 0.0))
        rows[f"training, {a.epochs} epochs"] = rates

    print(f"FSDD train split: {n} clips from {folder}; model {recipe.model.name_or_path} from config; batch "
          f"{args.per_device_train_batch_size}, {args.dataloader_num_workers} workers, torch threads {torch.get_num_threads()}; "
          f"best of {a.rounds} alternating pipeline rounds; decoded samples identical to FFmpeg's for {same} clips")
    print()
    print(f"| {'measurement':<30} | {'sft-hub clips/s':>15} | {'baseline clips/s':>16} | {'ratio (sft-hub / baseline)':>26} |")
    print(f"|{'-' * 32}|{'-' * 17}|{'-' * 18}|{'-' * 28}|")
    for what, row in rows.items():
        print(f"| {what:<30} | {row['sft-hub']:>15.1f} | {row['baseline']:>16.1f} | {row['sft-hub'] / row['baseline']:>26.2f} |")


if __name__ == "__main__":
    main()
