"""GLUE: the nine tasks' columns, labels and metrics, read from the Hub (`nyu-mll/glue`) or from a local
folder in the official GLUE TSV layout written by the GLUE download script.

Local files are tab-separated with no quoting (sentences hold `"` and `'` and are read verbatim); they
are loaded through `datasets`' csv builder so parsing and tokenisation are cached. Every split comes
out with columns `text_a`, optional `text_b`, and `labels` (class id, or float score for STS-B).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset

from sft_hub.errors import DataError

HUB_ID = "nyu-mll/glue"


@dataclass(frozen=True)
class GlueTask:
    hub_columns: tuple[str, ...]  # text columns in nyu-mll/glue
    labels: tuple[str, ...] | None  # None: regression
    metric_extras: tuple[str, ...]  # besides accuracy: "f1" (MRPC/QQP), "mcc" (CoLA)
    main_metric: str
    local_columns: tuple  # text columns then label column, by name or (for headerless/variant files) by position
    local_names: tuple[str, ...] | None = None  # column names for files without a header (CoLA)
    eval_files: dict[str, str] = field(default_factory=lambda: {"validation": "dev.tsv"})


TASKS: dict[str, GlueTask] = {
    "cola": GlueTask(("sentence",), ("unacceptable", "acceptable"), ("mcc",), "matthews_correlation",
                     ("sentence", "label"), local_names=("source", "label", "label_notes", "sentence")),
    "sst2": GlueTask(("sentence",), ("negative", "positive"), (), "accuracy", ("sentence", "label")),
    "mrpc": GlueTask(("sentence1", "sentence2"), ("not_equivalent", "equivalent"), ("f1",), "f1",
                     ("#1 String", "#2 String", "Quality")),
    "stsb": GlueTask(("sentence1", "sentence2"), None, (), "pearson", ("sentence1", "sentence2", "score")),
    "qqp": GlueTask(("question1", "question2"), ("not_duplicate", "duplicate"), ("f1",), "f1",
                    ("question1", "question2", "is_duplicate")),
    "mnli": GlueTask(("premise", "hypothesis"), ("entailment", "neutral", "contradiction"), (), "accuracy",
                     ("sentence1", "sentence2", "gold_label"),
                     eval_files={"validation_matched": "dev_matched.tsv", "validation_mismatched": "dev_mismatched.tsv"}),
    # QNLI/RTE/WNLI: `index <text> <text> label`; QNLI's header names its texts question/sentence, so by position.
    "qnli": GlueTask(("question", "sentence"), ("entailment", "not_entailment"), (), "accuracy", (1, 2, 3)),
    "rte": GlueTask(("sentence1", "sentence2"), ("entailment", "not_entailment"), (), "accuracy", (1, 2, 3)),
    "wnli": GlueTask(("sentence1", "sentence2"), ("not_entailment", "entailment"), (), "accuracy", (1, 2, 3)),
}

HUB_EVAL_SPLITS = {"mnli": ["validation_matched", "validation_mismatched"]}


def eval_splits(task: str) -> list[str]:
    return HUB_EVAL_SPLITS.get(task, ["validation"])


def _label_id(value: str, names: tuple[str, ...] | None, where: str) -> int | float:
    value = value.strip()
    if names is None:
        try:
            return float(value)
        except ValueError:
            raise DataError(f"{where}: score {value!r} is not a number") from None
    if value in names:
        return names.index(value)
    if value.lstrip("-").isdigit() and 0 <= int(value) < len(names):
        return int(value)
    raise DataError(f"{where}: label {value!r} is not one of {', '.join(names)} (or 0..{len(names) - 1})")


def read_local_split(path: Path, spec: GlueTask) -> Dataset:
    """One GLUE TSV file -> Dataset(text_a[, text_b], labels), parsed verbatim (no quoting)."""
    if not path.is_file():
        raise DataError(f"data.data_dir: GLUE file {path} not found")
    cols = spec.local_columns
    kwargs = dict(sep="\t", quoting=csv.QUOTE_NONE, keep_default_na=False, na_filter=False)
    if spec.local_names:
        kwargs.update(header=None, names=list(spec.local_names))
    try:
        ds = load_dataset("csv", data_files={"split": str(path)}, split="split", **kwargs)
    except Exception as exc:  # pandas ParserError: "Expected 4 fields in line 12, saw 5"
        raise DataError(f"{path}: cannot parse as GLUE TSV: {str(exc).splitlines()[-1]}") from None
    names = ds.column_names
    if isinstance(cols[0], int):
        if len(names) <= max(cols):
            raise DataError(f"{path}: expected at least {max(cols) + 1} tab-separated columns, found {names}")
        cols = tuple(names[i] for i in cols)
    missing = [c for c in cols if c not in names]
    if missing:
        raise DataError(f"{path}: column {missing[0]!r} not found; columns are {', '.join(map(str, names))}")
    *text_cols, label_col = cols
    first_row = 1 if spec.local_names else 2  # file line number of row 0

    def convert(row: dict, index: int) -> dict:
        out = {"text_a": str(row[text_cols[0]]), "labels": _label_id(str(row[label_col]), spec.labels, f"{path} line {index + first_row}")}
        if len(text_cols) > 1:
            out["text_b"] = str(row[text_cols[1]])
        return out

    # A cached `datasets` map (not an in-memory copy), so tokenisation downstream is cached on disk too.
    return ds.map(convert, with_indices=True, remove_columns=names, desc=f"reading {path.name}")


def load_local(task: str, data_dir: Path) -> DatasetDict:
    spec = TASKS[task]
    files = {"train": "train.tsv", **spec.eval_files}
    return DatasetDict({split: read_local_split(data_dir / name, spec) for split, name in files.items()})


def load_hub(task: str, revision: str | None = None) -> DatasetDict:
    spec = TASKS[task]
    raw = load_dataset(HUB_ID, task, revision=revision)
    out = {}
    for split in ["train", *eval_splits(task)]:
        ds = raw[split]
        rename = {spec.hub_columns[0]: "text_a", "label": "labels"}
        if len(spec.hub_columns) > 1:
            rename[spec.hub_columns[1]] = "text_b"
        ds = ds.rename_columns(rename)
        out[split] = ds.remove_columns([c for c in ds.column_names if c not in rename.values()])
    return DatasetDict(out)
