"""The real CLI as users run it: train, eval, predict, recipes, errors; and two-process DDP on CPU."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import yaml
from conftest import REPO, text_recipe, write_sentiment_csv


def run(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    proc = subprocess.run(args, capture_output=True, text=True, env=full_env, cwd=REPO, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def sft_hub(*args: str, **kw) -> subprocess.CompletedProcess:
    return run(sys.executable, "-m", "sft_hub", *args, **kw)


def test_train_eval_predict(tiny_bert, tmp_path):
    files = write_sentiment_csv(tmp_path, sep="\t")
    raw = text_recipe(tiny_bert, files, tmp_path / "run")
    raw["data"]["source"] = "tsv"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    out = sft_hub("train", str(recipe), "training.max_steps=4", "strategy.r=2").stdout
    assert "run saved to" in out and re.search(r"validation: .*accuracy=", out)
    assert yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())["strategy"]["r"] == 2

    metrics = json.loads(sft_hub("eval", str(tmp_path / "run"), "--json").stdout)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert metrics["validation"]["accuracy"] == pytest.approx(manifest["metrics"]["validation"]["eval_validation_accuracy"])

    lines = sft_hub("predict", str(tmp_path / "run"), "the movie was great", "a dreadful plot", "--json").stdout.splitlines()
    preds = [json.loads(line) for line in lines]
    assert [p["input"] for p in preds] == ["the movie was great", "a dreadful plot"]
    assert all(p["label"] in ("neg", "pos") and 0.5 <= p["score"] <= 1 for p in preds)

    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("".join(json.dumps({"review": t}) + "\n" for t in ["so good", "so bad", "fine film"]))
    assert len(sft_hub("predict", str(tmp_path / "run"), "--file", str(inputs)).stdout.splitlines()) == 3


def test_errors_are_one_line(tmp_path, tiny_bert):
    recipe = tmp_path / "recipe.yaml"
    raw = text_recipe(tiny_bert, write_sentiment_csv(tmp_path), tmp_path / "run")
    raw["training"]["num_train_epoch"] = 1
    recipe.write_text(yaml.safe_dump(raw))
    proc = sft_hub("train", str(recipe), check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: training.num_train_epoch: unknown key; did you mean 'num_train_epochs'?"
    proc = sft_hub("eval", str(tmp_path / "missing"), check=False)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: run directory")


def test_words_after_a_flag_still_belong_to_the_trailing_list(tmp_path, capsys):
    from sft_hub.cli import parse

    a = parse(["train", "r.yaml", "a=1", "--overwrite", "b=2"])
    assert (a.recipe, a.overrides, a.overwrite) == ("r.yaml", ["a=1", "b=2"], True)
    a = parse(["train", "r.yaml", "--resume", "training.seed=3"])  # not a checkpoint: an override
    assert (a.resume, a.overrides) == (True, ["training.seed=3"])
    ckpt = tmp_path / "checkpoint-4"
    ckpt.mkdir()
    assert parse(["train", "r.yaml", "--resume", str(ckpt), "x=1"]).resume == str(ckpt)
    assert parse(["predict", "RUN", "--json", "a fine film", "dull"]).args == ["RUN", "a fine film", "dull"]
    for argv in (["train", "r.yaml", "a=1", "--bogus"], ["compare", "RUN", "extra", "--json", "x"]):
        with pytest.raises(SystemExit) as exit_info:
            parse(argv)
        assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [  # compare has no trailing list: "x" after --json is nobody's
        "error: sft-hub: unrecognized arguments: --bogus (see sft-hub --help)",
        "error: sft-hub: unrecognized arguments: x (see sft-hub --help)"]


def test_help_and_recipes_listing():
    for cmd in ([], ["train"], ["eval"], ["predict"], ["recipes"], ["demo"]):
        assert "usage: sft-hub" in sft_hub(*cmd, "--help").stdout
    listing = sft_hub("recipes").stdout
    assert "text_classification/sentiment_minilm_lora.yaml" in listing and "Offline demo" in listing


@pytest.mark.multiprocess
@pytest.mark.parametrize("strategy", [None, {"name": "partial", "n": 1, "unfreeze_after": {"steps": 2}, "layer_decay": 0.5}],
                         ids=["lora", "partial-unfreezing"])
def test_two_process_ddp_on_cpu(tiny_bert, tmp_path, strategy):
    """gloo DDP: identical weights on both ranks, rank 0 alone writes, eval counts each example once.
    With gradual unfreezing, parameters that thaw mid-run (step 3) are synchronised too."""
    files = write_sentiment_csv(tmp_path, n_train=40, n_val=7)  # 7 does not split evenly over 2 ranks
    raw = text_recipe(tiny_bert, files, tmp_path / "run", strategy, max_steps=3, per_device_eval_batch_size=2)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    proc = run(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "sft_hub", "train", str(recipe),
               env={"ACCELERATE_USE_CPU": "1", "MASTER_PORT": "29517"})
    shas = dict(re.findall(r"rank (\d+): trained weights sha256 ([0-9a-f]{64})", proc.stderr))
    assert set(shas) == {"0", "1"} and shas["0"] == shas["1"]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and manifest["trained_sha256"] == shas["0"]
    assert manifest["metrics"]["validation"]["eval_validation_num_examples"] == 7
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if "grad_norm" in line]
    assert steps == [1, 2, 3]  # logged once, by rank 0
