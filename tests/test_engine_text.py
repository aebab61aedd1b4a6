"""The engine end to end on a tiny BERT: run dir contract, reload equality, exact gradient accumulation."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import text_recipe

from sft_hub.base_model import files_sha256
from sft_hub.config import parse_recipe
from sft_hub.engine import train
from sft_hub.errors import RunError
from sft_hub.inference import evaluate, load_run, logits


@pytest.mark.parametrize("strategy,saved", [
    ({"name": "lora", "r": 4, "alpha": 8, "target_modules": ["query", "value"]}, "adapter"),
    ({"name": "head"}, "head"),
    ({"name": "full"}, "model"),
])
def test_run_dir_and_reload_equal_predictions(tiny_bert, sentiment_files, tmp_path, strategy, saved):
    out_dir = tmp_path / "run"
    before = files_sha256(sorted(tiny_bert.glob("*.safetensors")))
    result = train(parse_recipe(text_recipe(tiny_bert, sentiment_files, out_dir, strategy)))
    for name in ("recipe.yaml", "manifest.json", "eval_results.json", "metrics.jsonl", "README.md", "processor", saved):
        assert (out_dir / name).exists(), name
    assert not list(out_dir.rglob("*.bin")) and not list(out_dir.rglob("*.pt*")) or saved == "model"
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert manifest["base"]["files_sha256"] == before == files_sha256(sorted(tiny_bert.glob("*.safetensors")))
    assert manifest["labels"] == ["neg", "pos"] and manifest["saved_as"] == saved
    assert manifest["metrics"]["validation"]["eval_validation_num_examples"] == 16
    if saved != "model":
        assert manifest["parameters"]["trainable"] < manifest["parameters"]["total"] / 5
    umask = os.umask(0)
    os.umask(umask)
    weights = list(out_dir.rglob("*.safetensors"))
    assert weights and {oct(f.stat().st_mode & 0o777) for f in weights} == {oct(0o666 & ~umask)}  # not owner-only

    trainer = result["trainer"]
    at_end = trainer.predict(trainer.eval_dataset).predictions
    loaded = load_run(out_dir)
    from datasets import load_dataset

    rows = load_dataset("csv", data_files=sentiment_files["validation"], split="train").rename_column("review", "text_a")
    np.testing.assert_allclose(logits(loaded, rows.remove_columns(["sentiment"])), at_end, atol=1e-6, rtol=0)
    metrics = evaluate(loaded)["validation"]
    assert metrics["accuracy"] == pytest.approx(manifest["metrics"]["validation"]["eval_validation_accuracy"])


def test_gradient_accumulation_is_exact(tiny_bert, tmp_path):
    """16x2 and 32x1 give the same loss and grad norm (transformers#47688 fixed by the engine's loss)."""
    from conftest import write_sentiment_csv

    files = write_sentiment_csv(tmp_path, n_train=128, n_val=8)
    logs = {}
    for name, (bs, ga) in {"16x2": (16, 2), "32x1": (32, 1)}.items():
        out = tmp_path / name
        raw = text_recipe(tiny_bert, files, out, {"name": "full"}, per_device_train_batch_size=bs,
                          gradient_accumulation_steps=ga, max_steps=4, learning_rate=1e-3)
        raw["data"]["max_length"] = 12  # every fixture sentence is 6 words: identical padding either way
        train(parse_recipe(raw))
        logs[name] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = {name: [r for r in rows if "grad_norm" in r] for name, rows in logs.items()}
    assert len(steps["16x2"]) == len(steps["32x1"]) == 4
    for a, b in zip(steps["16x2"], steps["32x1"]):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], abs=1e-5)


def test_bf16_on_cpu(tiny_bert, sentiment_files, tmp_path):
    result = train(parse_recipe(text_recipe(tiny_bert, sentiment_files, tmp_path / "bf16", bf16=True, max_steps=2)))
    assert result["manifest"]["precision"] == "bf16"
    assert np.isfinite(result["metrics"]["validation"]["eval_validation_loss"])


def test_manifest_records_a_launcher_given_precision(tiny_bert, sentiment_files, tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # what `accelerate launch --mixed_precision bf16` sets
    result = train(parse_recipe(text_recipe(tiny_bert, sentiment_files, tmp_path / "launched", max_steps=1)))
    assert result["manifest"]["precision"] == "bf16"


def test_output_dir_holding_another_run_is_refused(tiny_bert, sentiment_files, tmp_path):
    out = tmp_path / "run"
    train(parse_recipe(text_recipe(tiny_bert, sentiment_files, out, max_steps=1)))
    adapter = (out / "adapter" / "adapter_model.safetensors").read_bytes()
    with pytest.raises(RunError, match="finished run"):
        train(parse_recipe(text_recipe(tiny_bert, sentiment_files, out, max_steps=1)))
    with pytest.raises(RunError, match=r"different run \(differs in training.learning_rate"):
        train(parse_recipe(text_recipe(tiny_bert, sentiment_files, out, max_steps=1, learning_rate=0.1)))
    assert (out / "adapter" / "adapter_model.safetensors").read_bytes() == adapter  # nothing lost
    train(parse_recipe(text_recipe(tiny_bert, sentiment_files, out, max_steps=1, learning_rate=0.1)), overwrite=True)
    assert json.loads((out / "manifest.json").read_text())["strategy"]["name"] == "lora"


def test_base_fingerprint_checked_on_load(tiny_bert, sentiment_files, tmp_path):
    import shutil

    base = tmp_path / "base"
    shutil.copytree(tiny_bert, base)
    out = tmp_path / "run"
    train(parse_recipe(text_recipe(base, sentiment_files, out, max_steps=1)))
    from conftest import write_tiny_bert
    write_tiny_bert(base, seed=1)  # same architecture and id, different weights
    with pytest.raises(RunError, match="weights differ from the base this run was trained on"):
        load_run(out)
    assert load_run(out, allow_base_mismatch=True).model is not None
