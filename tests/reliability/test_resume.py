"""Crashes and preemption: complete checkpoints only, exact resume, graceful SIGTERM, safe rotation."""

from __future__ import annotations

import json
import signal
import time

import pytest
import torch
import yaml
from conftest import text_recipe, write_sentiment_csv
from faults import losses, run_cli
from safetensors.torch import load_file

from sft_hub import runs


LORA = {"name": "lora", "r": 4, "alpha": 8, "lora_dropout": 0.1, "target_modules": ["query", "value"]}


def recipe_file(tmp_path, tiny_bert, out, strategy=None, **training):
    files = write_sentiment_csv(tmp_path, n_train=44, n_val=8)  # 44 / (4 x 2) -> steps end mid-epoch
    settings = dict(per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=10, save_strategy="steps",
                    save_steps=4, learning_rate=5e-3)
    raw = text_recipe(tiny_bert, files, out, strategy or LORA, **{**settings, **training})
    raw["model"]["dropout"] = 0.1  # dropout on: resume must restore the RNG state too
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("grouped", [pytest.param(False, marks=pytest.mark.multiprocess), True],  # random order: a .ci/run step
                         ids=["random-batches", "length-grouped"])
def test_sigkill_then_resume_is_exact(tiny_bert, tmp_path, grouped):
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    assert run_cli("none", "train", str(recipe_file(tmp_path, tiny_bert, straight, group_by_length=grouped))).returncode == 0
    recipe = recipe_file(tmp_path, tiny_bert, crashed, group_by_length=grouped)
    killed = run_cli("kill_after_complete:4", "train", str(recipe))
    assert killed.returncode == -signal.SIGKILL
    assert runs.latest_complete_checkpoint(crashed).name == "checkpoint-4" and not (crashed / "manifest.json").exists()
    resumed = run_cli("none", "train", str(recipe))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stderr and "checkpoint-4" in resumed.stderr
    a, b = losses(straight), losses(crashed)
    assert sorted(a) == sorted(b) == list(range(1, 11))
    assert all(a[s] == b[s] for s in range(5, 11))  # identical losses and grad norms after the resume point
    wa, wb = (load_file(str(d / "adapter" / "adapter_model.safetensors")) for d in (straight, crashed))
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)  # bit-identical on CPU


@pytest.mark.multiprocess  # a killed child process: run by its own .ci/run step
def test_sigkill_before_and_after_the_unfreeze_point_then_resume_is_exact(tiny_bert, tmp_path):
    """Gradual unfreezing (head only for steps 1-6) with layer-wise and head learning rates: killed after
    checkpoint-4 (before the unfreeze point), resumed across it and killed again after checkpoint-8, resumed."""
    strategy = {"name": "partial", "n": 1, "unfreeze_after": {"steps": 6}, "layer_decay": 0.5, "head_lr": 0.02}
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    assert run_cli("none", "train", str(recipe_file(tmp_path, tiny_bert, straight, strategy))).returncode == 0
    recipe = recipe_file(tmp_path, tiny_bert, crashed, strategy)
    assert run_cli("kill_after_complete:4", "train", str(recipe)).returncode == -signal.SIGKILL
    again = run_cli("kill_after_complete:8", "train", str(recipe))
    assert again.returncode == -signal.SIGKILL and "checkpoint-4" in again.stderr
    resumed = run_cli("none", "train", str(recipe))
    assert resumed.returncode == 0 and "checkpoint-8" in resumed.stderr, resumed.stderr[-2000:]
    a, b = losses(straight), losses(crashed)
    assert sorted(a) == sorted(b) == list(range(1, 11)) and all(a[s] == b[s] for s in range(1, 11))
    wa, wb = (load_file(str(d / "partial" / "partial.safetensors")) for d in (straight, crashed))
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)
    first = load_file(str(straight / "checkpoints" / "checkpoint-4" / "model.safetensors"))
    block = [k for k in wa if k.startswith("bert.encoder.layer.1.") and k.endswith("weight")]
    assert block and all((first[k] != wa[k]).any() for k in block)  # the block did train after the unfreeze point


def test_kill_during_save_leaves_an_incomplete_checkpoint_that_is_skipped(tiny_bert, tmp_path):
    out = tmp_path / "run"
    recipe = recipe_file(tmp_path, tiny_bert, out)
    assert run_cli("kill_during_save:8", "train", str(recipe)).returncode == -signal.SIGKILL
    found = {p.name: ok for _, p, ok in runs.checkpoints(out)}
    assert found == {"checkpoint-4": True, "checkpoint-8": False}
    resumed = run_cli("none", "train", str(recipe))
    assert resumed.returncode == 0
    assert "ignoring incomplete checkpoint" in resumed.stderr and "resuming from" in resumed.stderr
    assert "checkpoint-4" in resumed.stderr.split("resuming from", 1)[1].splitlines()[0]
    assert (out / "manifest.json").exists()


def test_sigterm_saves_a_complete_checkpoint_and_exits_cleanly(tiny_bert, tmp_path):
    out = tmp_path / "run"
    recipe = recipe_file(tmp_path, tiny_bert, out, save_steps=1000)
    stopped = run_cli("term_at_step:3", "train", str(recipe))
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    assert "stopped by SIGTERM at step 3" in stopped.stderr
    assert runs.latest_complete_checkpoint(out).name == "checkpoint-3" and not (out / "manifest.json").exists()
    resumed = run_cli("none", "train", str(recipe))
    assert resumed.returncode == 0 and "checkpoint-3" in resumed.stderr and (out / "manifest.json").exists()


def test_rotation_never_deletes_the_newest_complete_checkpoint(tmp_path):
    for step, complete in ((2, True), (4, True), (6, False)):
        ckpt = tmp_path / "checkpoints" / f"checkpoint-{step}"
        ckpt.mkdir(parents=True)
        (ckpt / "model.safetensors").write_bytes(b"x")
        if complete:
            runs.mark_complete(ckpt)
        time.sleep(0.01)
    runs.rotate(tmp_path, keep=1)
    assert {p.name: ok for _, p, ok in runs.checkpoints(tmp_path)} == {"checkpoint-4": True, "checkpoint-6": False}


def test_resume_with_other_labels_is_refused(tiny_bert, tmp_path):
    out = tmp_path / "run"
    recipe = recipe_file(tmp_path, tiny_bert, out)
    assert run_cli("kill_after_complete:4", "train", str(recipe)).returncode == -signal.SIGKILL
    train_csv = tmp_path / "train.csv"
    train_csv.write_text(train_csv.read_text() + "a very so so film,meh\n")
    (tmp_path / "validation.csv").write_text((tmp_path / "validation.csv").read_text() + "so so,meh\n")
    proc = run_cli("none", "train", str(recipe))
    assert proc.returncode == 2
    assert "3 labels now, but the checkpoints in" in proc.stderr and "were trained with 2 labels" in proc.stderr
    assert runs.latest_complete_checkpoint(out).name == "checkpoint-4"  # nothing lost


@pytest.mark.parametrize("action", ["error", "skip"])
def test_nonfinite_loss(tiny_bert, tmp_path, action):
    files = write_sentiment_csv(tmp_path, n_train=16, n_val=4)
    lines = (tmp_path / "train.csv").read_text().splitlines()
    rows = ["review,score"] + [f"{ln.split(',')[0]},{i % 5 / 2}" for i, ln in enumerate(lines[1:])]
    rows[5] = rows[5].rsplit(",", 1)[0] + ",nan"
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "validation.csv").write_text("review,score\nthe film,1.5\na plot,2.0\nso good,3.0\n")
    raw = text_recipe(tiny_bert, files, tmp_path / "run", {"name": "full"}, max_steps=4, per_device_train_batch_size=4)
    raw["data"].update(label_column="score", problem_type="regression")
    raw["engine"] = {"nonfinite_loss": action, "max_nonfinite_skips": 3}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    proc = run_cli("none", "train", str(path))
    if action == "error":
        assert proc.returncode == 2 and "error: non-finite loss (nan) at step" in proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert json.loads((tmp_path / "run" / "manifest.json").read_text())["nonfinite_skipped"] >= 1


@pytest.mark.multiprocess  # a killed child process: run by its own .ci/run step
def test_sigkill_then_resume_restores_the_weight_average_exactly(tiny_bert, tmp_path):
    """engine.ema: the average is saved in each checkpoint and read back; resumed == uninterrupted, bit for bit."""
    paths = {}
    for name in ("straight", "crashed"):
        path = recipe_file(tmp_path, tiny_bert, tmp_path / name)
        raw = yaml.safe_load(path.read_text())
        raw["engine"] = {"ema": {"decay": 0.7}}
        path.write_text(yaml.safe_dump(raw))
        paths[name] = path
    assert run_cli("none", "train", str(paths["straight"])).returncode == 0
    assert run_cli("kill_after_complete:4", "train", str(paths["crashed"])).returncode == -signal.SIGKILL
    assert (tmp_path / "crashed" / "checkpoints" / "checkpoint-4" / "ema.safetensors").is_file()
    resumed = run_cli("none", "train", str(paths["crashed"]))
    assert resumed.returncode == 0 and "checkpoint-4" in resumed.stderr, resumed.stderr[-2000:]
    for rel in ("checkpoints/checkpoint-8/ema.safetensors", "adapter/adapter_model.safetensors"):
        wa, wb = (load_file(str(tmp_path / d / rel)) for d in ("straight", "crashed"))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), rel
    final, raw_weights = (load_file(str(tmp_path / "crashed" / rel)) for rel in
                          ("adapter/adapter_model.safetensors", "checkpoints/checkpoint-8/adapter_model.safetensors"))
    assert any(not torch.equal(final[k], raw_weights[k]) for k in final)  # what was saved is the average, not the raw weights
