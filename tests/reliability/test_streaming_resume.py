"""Streamed training data: a SIGKILL mid-run resumes at the saved stream position, exactly."""

from __future__ import annotations

import json
import signal

import pytest
import yaml
from conftest import text_recipe, write_sentiment_csv
from faults import losses, run_cli
from safetensors.torch import load_file

from sft_hub import runs


def recipe_file(tmp_path, tiny_bert, out):
    files = write_sentiment_csv(tmp_path, n_train=40, n_val=7)  # 40 rows / 8 per step: a pass ends every 5 steps
    raw = text_recipe(tiny_bert, files, out, {"name": "lora", "r": 4, "alpha": 8, "lora_dropout": 0.1, "target_modules": ["query", "value"]},
                      per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=12, save_strategy="steps", save_steps=3)
    raw["model"]["dropout"] = 0.1
    raw["data"].update(streaming=True, labels=["neg", "pos"])
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.multiprocess  # a killed child process: run by its own .ci/run step
def test_streamed_sigkill_then_resume_is_exact(tiny_bert, tmp_path):
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    first = run_cli("none", "train", str(recipe_file(tmp_path, tiny_bert, straight)))
    assert first.returncode == 0, first.stderr[-2000:]
    recipe = recipe_file(tmp_path, tiny_bert, crashed)
    assert run_cli("kill_after_complete:6", "train", str(recipe)).returncode == -signal.SIGKILL  # in the second pass
    ckpt = runs.latest_complete_checkpoint(crashed)
    position = json.loads((ckpt / "stream_state_0.json").read_text())
    assert ckpt.name == "checkpoint-6" and position["pass"] == 1 and position["consumed"] == 48
    resumed = run_cli("none", "train", str(recipe))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stderr and "checkpoint-6" in resumed.stderr
    a, b = losses(straight), losses(crashed)
    assert sorted(a) == sorted(b) == list(range(1, 13))
    assert all(a[s] == b[s] for s in range(7, 13))  # same batches, dropout and updates after the resume point
    wa, wb = (load_file(str(d / "adapter" / "adapter_model.safetensors")) for d in (straight, crashed))
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)
    manifest = json.loads((crashed / "manifest.json").read_text())
    assert manifest["splits"] == {"train": "streamed", "validation": 7}
    assert manifest["metrics"]["validation"]["eval_validation_num_examples"] == 7
