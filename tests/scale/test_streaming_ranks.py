"""Streamed data on 2 DDP processes: each rank trains on its own part, resumes at its own position after a
SIGKILL of the whole job, and metrics on the eval split count every example once."""

from __future__ import annotations

import json
import signal

import pytest
import yaml
from conftest import text_recipe, write_sentiment_csv
from launch import finish, free_port, max_diff, rank_shas, saved_weights, start

from sft_hub import runs

pytestmark = pytest.mark.multiprocess


def recipe(tmp_path, tiny_bert, name):
    files = write_sentiment_csv(tmp_path, n_train=40, n_val=7)  # 7 does not split evenly over 2 ranks
    raw = text_recipe(tiny_bert, files, tmp_path / name, {"name": "lora", "r": 4, "alpha": 8, "lora_dropout": 0.1, "target_modules": ["query", "value"]},
                      max_steps=6, per_device_train_batch_size=4, save_strategy="steps", save_steps=3, per_device_eval_batch_size=2)
    raw["model"]["dropout"] = 0.1
    raw["data"].update(streaming=True, labels=["neg", "pos"])
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def ddp(path, fault=""):
    return finish(start(["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                         "--main_process_port", str(free_port()), "-m", "sft_target", "train", str(path)], {"SFT_HUB_FAULT": fault}))


def test_two_ranks_stream_disjoint_parts_and_resume_exactly(tiny_bert, tmp_path):
    straight = ddp(recipe(tmp_path, tiny_bert, "straight"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    path = recipe(tmp_path, tiny_bert, "crashed")
    assert ddp(path, fault="kill_after_complete:3").returncode == -signal.SIGKILL
    ckpt = runs.latest_complete_checkpoint(tmp_path / "crashed")
    positions = [json.loads((ckpt / f"stream_state_{rank}.json").read_text()) for rank in (0, 1)]
    assert ckpt.name == "checkpoint-3" and [p["consumed"] for p in positions] == [12, 12]  # 3 steps x 4 rows, per rank
    resumed = ddp(path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr and "checkpoint-3" in resumed.stderr
    shas = rank_shas(resumed.stderr)
    assert set(shas) == {"0", "1"} and shas["0"] == shas["1"] == rank_shas(straight.stderr)["0"]
    assert max_diff(saved_weights(tmp_path / "crashed"), saved_weights(tmp_path / "straight")) == 0.0
    manifest = json.loads((tmp_path / "crashed" / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and manifest["metrics"]["validation"]["eval_validation_num_examples"] == 7
