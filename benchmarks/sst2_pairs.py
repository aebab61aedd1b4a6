"""Build a small sentence-pair task from GLUE SST-2, to test what makes a *small* pair task generalise (issue 10).

--kind same:  label 1 = the two sentences have the same sentiment, 0 = different. This is a parity
              (XOR) of two hidden bits: neither sentence alone says anything about the label, so
              there is no first-order signal to learn from.
--kind order: every pair has one positive and one negative sentence; label 1 = the first is the
              positive one (a pairwise preference, as in reward modelling). Each sentence alone
              carries signal, so a model that learns sentiment learns the task.
Balanced labels; training pairs come from SST-2 train sentences, dev pairs from the 872 SST-2 dev
sentences (no sentence is shared between the two, or used twice). Only sentences of at least
--min-words words are used, not SST-2's short phrase fragments.

    python benchmarks/sst2_pairs.py ../shared/data/glue/SST-2 /tmp/pairs --kind order --train 1500 --dev 400
    sft-hub train recipes/text_classification/pairs_minilm_full.yaml data.data_files.train=/tmp/pairs/train.csv \
        data.data_files.validation=/tmp/pairs/validation.csv
"""
from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path


def read_sst2(path: Path, min_words: int) -> dict[int, list[str]]:
    by_label: dict[int, list[str]] = {0: [], 1: []}
    with path.open(encoding="utf-8") as f:
        next(f)  # header: sentence \t label (GLUE TSV, no quoting)
        for line in f:
            sentence, label = line.rstrip("\n").rsplit("\t", 1)
            if len(sentence.split()) >= min_words:
                by_label[int(label)].append(sentence.strip())
    return by_label


def make_pairs(by_label: dict[int, list[str]], n: int, rng: random.Random, kind: str = "same") -> list[tuple[str, str, int]]:
    """n balanced pairs of `kind` (see the module docstring); each sentence used at most once."""
    pools = {k: rng.sample(v, len(v)) for k, v in by_label.items()}
    need = {0: 0, 1: 0}  # sentences needed per sentiment
    kinds = [1] * (n // 2) + [0] * (n - n // 2)
    rng.shuffle(kinds)
    plan = []
    for same in kinds:
        if kind == "order":  # label 1 = the positive sentence first
            plan.append((same, 1 - same, same))
            need[0] += 1
            need[1] += 1
        elif same:
            s = rng.randint(0, 1)
            plan.append((s, s, 1))
            need[s] += 2
        else:
            a = rng.randint(0, 1)
            plan.append((a, 1 - a, 0))
            need[0] += 1
            need[1] += 1
    for k in (0, 1):
        if need[k] > len(pools[k]):
            raise SystemExit(f"error: {n} pairs need {need[k]} sentences of label {k}, only {len(pools[k])} available")
    return [(pools[a].pop(), pools[b].pop(), y) for a, b, y in plan]


def write(rows: list[tuple[str, str, int]], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["sentence1", "sentence2", "label"])
        w.writerows(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("sst2_dir", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--train", type=int, default=1500)
    ap.add_argument("--dev", type=int, default=400)
    ap.add_argument("--min-words", type=int, default=4)
    ap.add_argument("--kind", choices=("same", "order"), default="same")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    train = make_pairs(read_sst2(args.sst2_dir / "train.tsv", args.min_words), args.train, rng, args.kind)
    dev = make_pairs(read_sst2(args.sst2_dir / "dev.tsv", args.min_words), args.dev, rng, args.kind)
    write(train, args.out_dir / "train.csv")
    write(dev, args.out_dir / "validation.csv")
    print(f"wrote {len(train)} train and {len(dev)} validation pairs to {args.out_dir}")


if __name__ == "__main__":
    main()
