"""Bad input: a one-line error naming the thing at fault, and the finished run beside it left intact."""

from __future__ import annotations

import hashlib

import pytest
import yaml
from conftest import text_recipe, write_sentiment_csv

from sft_hub.cli import main
from sft_hub.config import parse_recipe
from sft_hub.engine import train
from sft_hub.errors import RunError
from sft_hub.inference import load_run


@pytest.fixture(scope="module")
def finished(tiny_bert, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("finished")
    files = write_sentiment_csv(tmp)
    raw = text_recipe(tiny_bert, files, tmp / "run", max_steps=4, save_strategy="steps", save_steps=2)
    train(parse_recipe(raw))
    return tmp, raw


def snapshot(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def edit(raw, path, value):
    raw = yaml.safe_load(yaml.safe_dump(raw))
    node = raw
    *parents, last = path.split(".")
    for key in parents:
        node = node[key]
    node[last] = value
    return raw


CASES = {
    "unknown key": (lambda raw, tmp: edit(raw, "training.learning_rat", 1.0), "training.learning_rat: unknown key"),
    "wrong type": (lambda raw, tmp: edit(raw, "training.max_steps", "many"), "training.max_steps: expected int"),
    "negative learning rate": (lambda raw, tmp: edit(raw, "training.learning_rate", -1e-3), "training.learning_rate: must be >= 0"),
    "missing data file": (lambda raw, tmp: edit(raw, "data.data_files.train", str(tmp / "gone.csv")), "data.data_files.train: file"),
    "empty after filtering": (lambda raw, tmp: edit(raw, "data.max_train_samples", 0), "split 'train' is empty after subsetting"),
    "label column missing": (lambda raw, tmp: edit(raw, "data.label_column", "stars"), "label column 'stars' not in"),
    "different run in output dir": (lambda raw, tmp: edit(raw, "strategy.r", 16), "holds a different run (differs in strategy.r)"),
    "finished run in output dir": (lambda raw, tmp: raw, "holds a finished run of this recipe"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_loses_nothing(finished, capsys, case):
    tmp, raw = finished
    before = snapshot(tmp / "run")
    make, message = CASES[case]
    recipe = tmp / "bad.yaml"
    recipe.write_text(yaml.safe_dump(make(raw, tmp)))
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(recipe)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert snapshot(tmp / "run") == before


def test_malformed_yaml(finished, capsys):
    tmp, _ = finished
    (tmp / "broken.yaml").write_text("task: text_classification\ntraining: [unclosed\n")
    with pytest.raises(SystemExit):
        main(["train", str(tmp / "broken.yaml")])
    assert "broken.yaml: line 3, column 1: malformed YAML" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["missing config", "corrupt weights"])
def test_damaged_adapter_is_named(finished, tmp_path, damage):
    import shutil

    tmp, _ = finished
    run = tmp_path / "copy"
    shutil.copytree(tmp / "run", run)
    if damage == "missing config":
        (run / "adapter" / "adapter_config.json").unlink()
    else:
        weights = run / "adapter" / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
    expected = r"adapter_config.json: missing" if damage == "missing config" else r"adapter: cannot load adapter"
    with pytest.raises(RunError, match=expected):
        load_run(run)
