"""Every GLUE task read from a local folder in its official TSV layout, verbatim, with GLUE's metrics."""

from __future__ import annotations

import pytest
from glue_fixtures import QUOTED, write_glue

from sft_hub.config import from_dict
from sft_hub.errors import ConfigError, DataError
from sft_hub.tasks import text
from sft_hub.tasks.glue import TASKS

EXPECTED = {  # task -> (pair?, labels, eval splits)
    "cola": (False, ["unacceptable", "acceptable"], ["validation"]),
    "sst2": (False, ["negative", "positive"], ["validation"]),
    "mrpc": (True, ["not_equivalent", "equivalent"], ["validation"]),
    "stsb": (True, None, ["validation"]),
    "qqp": (True, ["not_duplicate", "duplicate"], ["validation"]),
    "mnli": (True, ["entailment", "neutral", "contradiction"], ["validation_matched", "validation_mismatched"]),
    "qnli": (True, ["entailment", "not_entailment"], ["validation"]),
    "rte": (True, ["entailment", "not_entailment"], ["validation"]),
    "wnli": (True, ["not_entailment", "entailment"], ["validation"]),
}


def load(folder, task, **extra):
    return text.load_data(from_dict(text.DataConfig, {"glue": task, "data_dir": str(folder), **extra}, "data"), seed=0)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_glue_layout_reads_verbatim(tmp_path, task):
    pair, labels, evals = EXPECTED[task]
    data = load(write_glue(tmp_path / task, task), task)
    assert data.labels == labels and data.eval_splits == evals
    train = data.splits["train"]
    assert len(train) == 12 and ("text_b" in train.column_names) == pair
    assert train[0]["text_a"] == QUOTED  # quotes and apostrophes kept, no CSV unquoting
    if labels is None:
        assert isinstance(train[1]["labels"], float) and train[1]["labels"] == pytest.approx(0.37)
    else:
        assert set(train["labels"]) <= set(range(len(labels))) and len(set(train["labels"])) >= 2
    if task == "mnli":
        assert len(data.splits["validation_mismatched"]) == 5


def test_glue_metrics_follow_the_benchmark():
    import numpy as np
    from transformers import EvalPrediction

    cfg = lambda t: from_dict(text.DataConfig, {"glue": t}, "data")  # noqa: E731
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    labels = np.array([1, 0, 0, 0])
    cola = text.metrics(cfg("cola"), ["u", "a"])(EvalPrediction(logits, labels))
    assert cola["matthews_correlation"] == pytest.approx(0.5773502691896258)
    mrpc = text.metrics(cfg("mrpc"), ["n", "e"])(EvalPrediction(logits, labels))
    assert mrpc["f1"] == pytest.approx(2 / 3) and mrpc["accuracy"] == 0.75 and mrpc["num_examples"] == 4
    stsb = text.metrics(cfg("stsb"), None)(EvalPrediction(np.array([[1.0], [2.0], [3.5], [3.0]]), np.array([1.1, 2.0, 3.0, 4.0])))
    assert stsb["spearmanr"] == pytest.approx(0.8) and stsb["pearson"] == pytest.approx(3.6125 / (3.6875 * 4.7075) ** 0.5)


def test_unknown_glue_task_suggests(tmp_path):
    with pytest.raises(ConfigError, match=r"data.glue: unknown GLUE task 'sst-2'; did you mean 'sst2'\?"):
        from_dict(text.DataConfig, {"glue": "sst-2"}, "data")


def test_malformed_row_and_bad_label_name_the_file_and_line(tmp_path):
    folder = write_glue(tmp_path / "rte", "rte")
    lines = (folder / "dev.tsv").read_text().splitlines()
    lines[3] = lines[3].rsplit("\t", 1)[0] + "\tmaybe"
    (folder / "dev.tsv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"dev.tsv line 4: label 'maybe' is not one of entailment, not_entailment"):
        load(folder, "rte")
    (folder / "train.tsv").unlink()
    with pytest.raises(DataError, match=r"GLUE file .*train.tsv not found"):
        load(folder, "rte")
