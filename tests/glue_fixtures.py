"""Writers for local GLUE folders in the official TSV layouts of the GLUE download script."""

from __future__ import annotations

import random
from pathlib import Path

from conftest import sentence

QUOTED = 'he said "it\'s fine" and left'  # quotes must survive verbatim: GLUE files are not quoted


def _rows(n: int, seed: int):
    rng = random.Random(seed)
    for i in range(n):
        yield i, i % 2 == 0, (QUOTED if i == 0 else sentence(rng, i % 2 == 0)), sentence(rng, i % 3 == 0)


def _write(path: Path, header: list[str] | None, rows: list[list]) -> None:
    lines = (["\t".join(header)] if header else []) + ["\t".join(map(str, r)) for r in rows]
    path.write_text("\n".join(lines) + "\n")


def write_glue(folder: Path, task: str, n_train: int = 12, n_dev: int = 6) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    nli = ["entailment", "neutral", "contradiction"]
    files = {"train.tsv": n_train, **({"dev_matched.tsv": n_dev, "dev_mismatched.tsv": n_dev - 1} if task == "mnli" else {"dev.tsv": n_dev})}
    for name, n in files.items():
        rows = list(_rows(n, seed=len(name) + n))
        path = folder / name
        if task == "cola":
            _write(path, None, [["gj04", int(p), "*" if not p else "", a] for i, p, a, b in rows])
        elif task == "sst2":
            _write(path, ["sentence", "label"], [[a, int(p)] for i, p, a, b in rows])
        elif task == "mrpc":
            _write(path, ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"], [[int(p), 100 + i, 200 + i, a, b] for i, p, a, b in rows])
        elif task == "stsb":
            _write(path, "index genre filename year old_index source1 source2 sentence1 sentence2 score".split(),
                   [[i, "main-captions", "MSRvid", "2012test", i, "none", "none", a, b, f"{(i * 0.37) % 5:.3f}"] for i, p, a, b in rows])
        elif task == "qqp":
            _write(path, ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"], [[i, 2 * i, 2 * i + 1, a, b, int(p)] for i, p, a, b in rows])
        elif task == "mnli":
            header = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse", "sentence1_parse",
                      "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"]
            _write(path, header, [[i, 10 + i, f"{i}e", "fiction", "( x )", "( y )", "(ROOT x)", "(ROOT y)", a, b, nli[i % 3], nli[i % 3]] for i, p, a, b in rows])
        elif task == "qnli":
            _write(path, ["index", "question", "sentence", "label"], [[i, a, b, "entailment" if p else "not_entailment"] for i, p, a, b in rows])
        elif task == "rte":
            _write(path, ["index", "sentence1", "sentence2", "label"], [[i, a, b, "entailment" if p else "not_entailment"] for i, p, a, b in rows])
        elif task == "wnli":
            _write(path, ["index", "sentence1", "sentence2", "label"], [[i, a, b, int(p)] for i, p, a, b in rows])
    return folder
