"""Every command with bad input: one line `error: ...` naming the field, file, flag or value; exit status 2.

Table-driven and in-process (`sft_hub.cli.main`), so a traceback would fail the test rather than print.
Train cases also check that the run dir they name was never created (nothing written on a failed start).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from conftest import text_recipe, write_sentiment_csv

from sft_hub.cli import main
from sft_hub.config import parse_recipe
from sft_hub.engine import train


@pytest.fixture(scope="module")
def ctx(tiny_bert, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli_errors")
    files = write_sentiment_csv(tmp)
    raw = text_recipe(tiny_bert, files, tmp / "run", max_steps=1)
    train(parse_recipe(raw))
    (tmp / "one_class.csv").write_text("review,sentiment\ngood film,pos\nnice film,pos\n")
    (tmp / "train.tsv").write_text("review\tsentiment\ngood film\tpos\nbad film\n the plot\tneg\n")
    (tmp / "val.tsv").write_text("review\tsentiment\ngood\tpos\nbad\tneg\n")
    (tmp / "latin1.yaml").write_bytes("description: caf\xe9\n".encode("latin-1"))
    (tmp / "thesis").mkdir()
    (tmp / "thesis" / "chapter1.tex").write_text("precious")
    (tmp / "a_file").write_text("x")
    broken = tmp / "broken_adapter"
    shutil.copytree(tmp / "run", broken)
    (broken / "adapter" / "adapter_model.safetensors").unlink()
    return {"tmp": tmp, "raw": raw, "run": tmp / "run"}


def recipe(ctx, case: str, edits: dict) -> tuple[str, Path]:
    """A copy of the base recipe with dotted `edits` (None deletes), writing into its own new output dir."""
    raw = yaml.safe_load(yaml.safe_dump(ctx["raw"]))
    out = ctx["tmp"] / f"out_{case.replace(' ', '_')}"
    raw["training"]["output_dir"] = str(out)
    for key, value in edits.items():
        node = raw
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    path = ctx["tmp"] / f"{case.replace(' ', '_')}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path), out


T = "{tmp}"  # placeholder for the fixture folder in argv tables
TRAIN = {  # case: (recipe edits, extra argv, expected text in the error line)
    "learning rate inf": ({"training.learning_rate": float("inf")}, [], "training.learning_rate: must be a finite number > 0, got inf"),
    "learning rate zero": ({"training.learning_rate": 0.0}, [], "training.learning_rate: must be a finite number > 0"),
    "zero epochs": ({"training.max_steps": None, "training.num_train_epochs": 0}, [], "training.num_train_epochs: 0 trains nothing"),
    "negative max_steps": ({"training.max_steps": -5}, [], "training.max_steps: must be > 0"),
    "zero max_steps": ({"training.max_steps": 0}, [], "training.max_steps: must be > 0"),
    "one class": ({"data.data_files": {"train": f"{T}/one_class.csv", "validation": f"{T}/one_class.csv"}}, [],
                  "data.label_column: the training split 'train' has one class (only 'pos')"),
    "tsv row without label": ({"data.source": "tsv", "data.data_files": {"train": f"{T}/train.tsv", "validation": f"{T}/val.tsv"}}, [],
                              "data.label_column: file {tmp}/train.tsv row 2 (line 3) has no 'sentiment' label"),
    "label smoothing out of range": ({"training.label_smoothing_factor": 1.5}, [], "training.label_smoothing_factor: must be in [0, 1)"),
    "metrics list": ({"metrics": ["f1"]}, [], "metrics: not supported"),
    "empty model name": ({"model.name_or_path": ""}, [], "model.name_or_path: empty"),
    "missing model folder": ({"model.name_or_path": "/no/such/model"}, [], "model.name_or_path: folder /no/such/model not found"),
    "unknown hub model": ({"model.name_or_path": "nobody/no-such-model"}, [], "model.name_or_path: 'nobody/no-such-model': cannot load"),
    "max_length above positions": ({"data.max_length": 500}, [], "data.max_length: 500 is above what"),
    "lora dropout": ({"strategy.lora_dropout": 5.0}, [], "strategy.lora_dropout: must be a probability between 0 and 1, got 5.0"),
    "lora rank": ({"strategy.r": 0}, [], "strategy.r: must be a positive number"),
    "lora targets": ({"strategy.target_modules": ["nosuch"]}, [], "strategy.target_modules:"),
    "model dropout": ({"model.dropout": 3}, [], "model.dropout: must be in [0, 1)"),
    "early stopping without best model": ({"engine.early_stopping_patience": 2}, [], "needs training.load_best_model_at_end: true"),
    "early stopping patience": ({"engine.early_stopping_patience": 0, "training.load_best_model_at_end": True,
                                 "training.eval_strategy": "steps", "training.save_strategy": "steps"}, [],
                                "engine.early_stopping_patience: must be >= 1"),
    "early stopping threshold alone": ({"engine.early_stopping_threshold": 0.1}, [], "engine.early_stopping_threshold: only used with"),
    "nonfinite action": ({"engine.nonfinite_loss": "maybe"}, [], "engine.nonfinite_loss: 'maybe' is not one of"),
    "best model without eval": ({"training.load_best_model_at_end": True}, [], "training.load_best_model_at_end: needs training.eval_strategy"),
    "misspelt best metric": ({"training.metric_for_best_model": "acuracy", "training.eval_strategy": "steps", "training.eval_steps": 1,
                              "training.save_strategy": "steps", "training.save_steps": 1}, [],
                             "training.metric_for_best_model: The `metric_for_best_model` training argument is set to 'eval_acuracy'"),
    "batch size": ({"training.per_device_train_batch_size": 0}, [], "training.per_device_train_batch_size: must be >= 1"),
    "scheduler": ({"training.lr_scheduler_type": "wobbly"}, [], "training: wobbly is not a valid SchedulerType"),
    "unknown training key": ({"training.learning_rat": 1.0}, [], "training.learning_rat: unknown key"),
    "text column": ({"data.text_columns": ["nosuch"]}, [], "data.text_columns: text column 'nosuch' not in"),
    "eval split": ({"data.eval_splits": ["nosuch"]}, [], "data.eval_splits: split 'nosuch' not found"),
    "resume folder missing": ({}, ["--resume", f"{T}/no_checkpoint"], "--resume {tmp}/no_checkpoint: folder not found"),
    "resume not a checkpoint": ({}, ["--resume", f"{T}/run"], "not a complete checkpoint (no COMPLETE marker)"),
}

WRITES_BEFORE_ERROR = {"misspelt best metric"}  # found by Trainer at the first evaluation, after the run started

OTHER = {  # case: (argv, expected text in the error line)
    "recipe not utf-8": (["train", f"{T}/latin1.yaml"], "recipe {tmp}/latin1.yaml: not UTF-8 text (byte 0xe9"),
    "recipe missing": (["train", f"{T}/nothing.yaml"], "recipe {tmp}/nothing.yaml: file not found"),
    "bad override": (["train", f"{T}/run/recipe.yaml", "learning_rate"], "override 'learning_rate': expected dotted.key=value"),
    "overwrite a non-run folder": (["train", "RECIPE:thesis", "--overwrite"], "--overwrite: {tmp}/thesis is not an sft-hub run dir"),
    "train into a non-run folder": (["train", "RECIPE:thesis"], "training.output_dir: {tmp}/thesis is not empty and holds no sft-hub run"),
    "no command": ([], "the following arguments are required: command"),
    "unknown command": (["fly"], "invalid choice: 'fly'"),
    "recipes extra argument": (["recipes", "extra"], "unrecognized arguments: extra"),
    "eval missing run": (["eval", f"{T}/nothing"], "run directory {tmp}/nothing not found"),
    "eval not a run": (["eval", f"{T}/thesis"], "{tmp}/thesis/manifest.json: not found"),
    "eval batch size": (["eval", f"{T}/run", "--batch-size", "0"], "--batch-size: must be >= 1, got 0"),
    "eval split": (["eval", f"{T}/run", "--split", "nosuch"], "--split nosuch: not found"),
    "predict top-k": (["predict", f"{T}/run", "good film", "--top-k", "0"], "--top-k: must be >= 1, got 0"),
    "predict no inputs": (["predict", f"{T}/run"], "predict: give inputs as arguments or --file FILE"),
    "predict no run": (["predict"], "predict: give RUN_DIR"),
    "predict file missing": (["predict", f"{T}/run", "--file", f"{T}/none.csv"], "--file {tmp}/none.csv: file not found"),
    "predict missing adapter file": (["predict", f"{T}/broken_adapter", "good"], "broken_adapter/adapter/adapter_model.safetensors: missing"),
    "predict adapters missing file": (["predict", "--adapter", f"{T}/run", "--adapter", f"{T}/broken_adapter", "good"],
                                      "broken_adapter/adapter/adapter_model.safetensors: missing"),
    "predict type": (["predict", f"{T}/run", "x", "--top-k", "many"], "--top-k: invalid int value: 'many'"),
    "export without merge": (["export", f"{T}/run", "--out", f"{T}/merged"], "export: only --merge is supported"),
    "export out is a file": (["export", f"{T}/run", "--merge", "--out", f"{T}/a_file"], "--out {tmp}/a_file: is a file"),
    "export out not empty": (["export", f"{T}/run", "--merge", "--out", f"{T}/thesis"], "--out {tmp}/thesis: folder is not empty"),
    "export missing run": (["export", f"{T}/nothing", "--merge", "--out", f"{T}/m"], "run directory {tmp}/nothing not found"),
    "push malformed repo id": (["push", f"{T}/run", "--repo-id", "bad repo id!!"], "--repo-id 'bad repo id!!': not a Hub repo id"),
    "push offline": (["push", f"{T}/run", "--repo-id", "me/x"], "push: offline (HF_HUB_OFFLINE is set)"),
    "push not logged in": (["push", f"{T}/run", "--repo-id", "me/x"], "push: not logged in to the Hugging Face Hub; log in with `hf auth login`"),
    "push dry run not empty": (["push", f"{T}/run", "--repo-id", "me/x", "--dry-run", f"{T}/thesis"], "{tmp}/thesis: folder is not empty"),
    "demo into a non-demo folder": (["demo", "--output-dir", f"{T}/thesis"], "demo --output-dir {tmp}/thesis: the folder is not empty"),
    "demo bad override": (["demo", "--output-dir", f"{T}/demo", "training.learning_rate=-1"], "training.learning_rate: must be >= 0"),
}


def run(capsys, argv: list[str]) -> tuple[int, list[str]]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code, capsys.readouterr().err.strip().splitlines()


def check(code: int, err: list[str], expected: str) -> None:
    errors = [line for line in err if line.startswith("error: ")]
    assert code == 2 and not any("Traceback" in line for line in err), err[-5:]
    assert len(errors) == 1 and expected in errors[0] and err[-1] == errors[0], err[-5:]  # one line, and it is the last


@pytest.mark.parametrize("case", sorted(TRAIN))
def test_train_bad_input(ctx, capsys, case):
    edits, extra, expected = TRAIN[case]
    tmp = str(ctx["tmp"])
    edits = yaml.safe_load(yaml.safe_dump(edits).replace(T, tmp))
    path, out = recipe(ctx, case, edits)
    code, err = run(capsys, ["train", path, *[a.replace(T, tmp) for a in extra]])
    check(code, err, expected.replace(T, tmp))
    assert not out.exists() or case in WRITES_BEFORE_ERROR  # nothing written into (or created for) the run dir


@pytest.mark.parametrize("case", sorted(OTHER))
def test_command_bad_input(ctx, capsys, monkeypatch, case):
    argv, expected = OTHER[case]
    tmp = str(ctx["tmp"])
    argv = [a.replace(T, tmp) for a in argv]
    if any(a.startswith("RECIPE:") for a in argv):  # the base recipe, pointed at a folder of the fixture
        argv = [recipe(ctx, case, {"training.output_dir": f"{tmp}/{a[7:]}"})[0] if a.startswith("RECIPE:") else a for a in argv]
    if case == "push not logged in":
        import huggingface_hub
        from huggingface_hub import constants

        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    before = sorted(p.name for p in (ctx["tmp"] / "thesis").iterdir())
    code, err = run(capsys, argv)
    check(code, err, expected.replace(T, tmp))
    assert sorted(p.name for p in (ctx["tmp"] / "thesis").iterdir()) == before == ["chapter1.tex"]
