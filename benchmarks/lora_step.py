"""One training step of LoRA against one of full fine-tuning: MiniLM-L6 on SST-2 batches, in one run.

Five models from the same seeded start: full fine-tuning as the engine runs it (the anchor; the model's
nn.Dropout layers through `sft_hub.fast_dropout`), the same with torch's own dropout, LoRA through peft's own
forward and torch's dropout (the path before `sft_hub.lora_fast`), LoRA as sft-hub trains it now
(`lora_fast` + `fast_dropout`), and the same with `dropout: 0` (a different recipe, not the same results: it
shows what LoRA's dropout still costs).
LoRA as in the SST-2 recipe (r 8, alpha 16, dropout 0.1, query/key/value/dense). Batches: the first
`--n` SST-2 training sentences, tokenised and cut into length-grouped batches of 32 by the engine's
sampler; optimisers from `Trainer.create_optimizer` (the engine's default, fused AdamW). A step is
forward, backward, optimizer step and zero_grad. Every round steps the five models on the same batch in
rotating order, batch by batch, so load from other jobs on the machine hits all five alike; the table
gives the median CPU time of a step (process time, one torch thread by default: on a shared machine
wall time mostly measures the other jobs) and the median over rounds of each round's time ratio to full fine-tuning.
Before timing, both LoRA paths run one step on a fixed batch from the same RNG state and the script
prints their largest logit and gradient differences.

    HF_HUB_OFFLINE=1 python benchmarks/lora_step.py [--data-dir ../shared/data/glue/SST-2] [--n 2000] [--rounds 5] [--batches 12]
"""

from __future__ import annotations

import argparse
import copy
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

LORA = {"name": "lora", "r": 8, "alpha": 16, "dropout": 0.1, "target_modules": ["query", "key", "value", "dense"]}
MODEL = "embedded/all-MiniLM-L6-v2"


def sst2_batches(data_dir: Path, n: int, batch_size: int = 32) -> list[dict]:
    import torch
    from datasets import DatasetDict

    from sft_hub.sampling import LengthGroupedBatches
    from sft_hub.tasks import text

    data = text.DataConfig(glue="sst2", data_dir=str(data_dir), max_train_samples=n)
    splits = text.load_data(data, seed=42).splits
    tok = text.load_processor(text.ModelConfig(MODEL))
    train = text.encode(DatasetDict({"train": splits["train"]}), tok, data, text.ModelConfig(MODEL), "train")["train"]
    order = list(LengthGroupedBatches(train["length"], batch_size, seed=42))
    collate = text.collator(tok, data)
    rows = train.with_format(None)
    batches = [collate([rows[i] for i in order[s:s + batch_size]]) for s in range(0, len(order), batch_size)]
    return [{k: torch.as_tensor(v) for k, v in b.items()} for b in batches]


def build(kind: str):
    """(model, optimizer) for 'full', 'lora (peft)' or 'lora (sft-hub)', from the same seeded head."""
    from transformers import Trainer, set_seed

    from sft_hub import fast_dropout, lora_fast
    from sft_hub.strategies import parse_strategy
    from sft_hub.tasks import text
    from sft_hub.training_args import build_training_args

    set_seed(42)
    built = text.build_model(text.ModelConfig(MODEL), ["negative", "positive"])
    spec = {"name": "full"} if kind.startswith("full") else {**LORA, "dropout": 0.0} if "dropout 0" in kind else LORA
    model = parse_strategy(spec).apply(built.model, built.info)
    if kind == "lora (peft)":
        lora_fast.uninstall(model)
    if kind not in ("lora (peft)", "full, torch drop"):
        fast_dropout.install(model)  # as the engine does
    model.train()
    lr = 5e-5 if kind == "full" else 1e-3
    args = build_training_args({"learning_rate": lr, "weight_decay": 0.01, "report_to": "none"}, Path(tempfile.mkdtemp()))
    return model, Trainer(model=model, args=args).create_optimizer()


def step(model, optimizer, batch: dict) -> None:
    model(**batch).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def equality(batch: dict) -> tuple[float, float]:
    """(max |logit diff|, max |grad diff|) of the two LoRA paths on one batch from the same RNG state."""
    import torch

    from sft_hub import fast_dropout, lora_fast

    ref, _ = build("lora (peft)")
    with torch.no_grad():  # a trained-looking adapter: B is zero at initialisation, which would hide A's gradients
        for name, p in ref.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02, generator=torch.Generator().manual_seed(len(name)))
    fast = copy.deepcopy(ref)
    lora_fast.install(fast)
    fast_dropout.install(fast)
    out = {}
    for name, model in (("ref", ref), ("fast", fast)):
        torch.manual_seed(123)
        result = model(**batch)
        result.loss.backward()
        out[name] = (result.logits.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    logit_diff = (out["ref"][0] - out["fast"][0]).abs().max().item()
    grad_diff = max((out["ref"][1][n] - out["fast"][1][n]).abs().max().item() for n in out["ref"][1])
    return logit_diff, grad_diff


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "glue" / "SST-2"))
    p.add_argument("--n", type=int, default=2000, help="SST-2 training sentences")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batches", type=int, default=12, help="batches per round")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU time stays honest when other jobs share the cores)")
    a = p.parse_args()
    if not (Path(a.data_dir) / "train.tsv").is_file():
        print(f"skipped: no SST-2 at {a.data_dir} (pass --data-dir)")
        return
    logging.disable(logging.WARNING)
    import datasets
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    torch.set_num_threads(a.threads)
    batches = sst2_batches(Path(a.data_dir), a.n)
    logit_diff, grad_diff = equality(batches[0])
    kinds = ["full", "full, torch drop", "lora (peft)", "lora (sft-hub)", "lora dropout 0"]
    models = {k: build(k) for k in kinds}
    for k in kinds:  # warm-up: first-call allocations and kernel selection
        step(*models[k], batches[1])
    times = {k: [] for k in kinds}
    for r in range(a.rounds):
        spent = dict.fromkeys(kinds, 0.0)
        for i in range(a.batches):
            batch = batches[2 + (r * a.batches + i) % (len(batches) - 2)]
            for j in range(len(kinds)):
                k = kinds[(i + j) % len(kinds)]
                start = time.process_time()  # CPU seconds: time spent descheduled by other jobs does not count
                step(*models[k], batch)
                spent[k] += time.process_time() - start
        for k in kinds:
            times[k].append(spent[k] / a.batches)
    tokens = statistics.mean(int(b["attention_mask"].numel()) for b in batches)
    print(f"MiniLM-L6, SST-2 first {a.n} training sentences, length-grouped batches of 32 (mean {tokens:.0f} padded tokens), "
          f"{a.rounds} rounds x {a.batches} batches, torch threads {torch.get_num_threads()}")
    print(f"LoRA paths on one batch: max |logit diff| {logit_diff:.1e}, max |grad diff| {grad_diff:.1e}")
    print()
    print(f"| {'step':<16} | {'median CPU ms/step':>18} | {'ratio to full (median of rounds)':>33} |")
    print(f"|{'-' * 18}|{'-' * 20}|{'-' * 35}|")
    for k in kinds:
        ratio = statistics.median(t / f for t, f in zip(times[k], times["full"]))
        print(f"| {k:<16} | {1000 * statistics.median(times[k]):>18.1f} | {ratio:>33.2f} |")


if __name__ == "__main__":
    main()
