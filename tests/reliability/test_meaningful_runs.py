"""A finished run is a trained run: early stopping keeps its best model, no NaN model is ever saved,
label smoothing is honoured, and rotation never deletes the best or the newest complete checkpoint."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import text_recipe, write_sentiment_csv
from safetensors.torch import load_file

from sft_hub import runs
from sft_hub.callbacks import FiniteWeights, NonFiniteLoss
from sft_hub.config import parse_recipe
from sft_hub.engine import train
from sft_hub.losses import make_loss
from sft_hub.inference import evaluate, load_run


def test_early_stopping_keeps_and_reloads_the_best_model(tiny_bert, tmp_path):
    files = write_sentiment_csv(tmp_path)
    raw = text_recipe(tiny_bert, files, tmp_path / "run", max_steps=20, learning_rate=0.05, eval_strategy="steps", eval_steps=1,
                      save_strategy="steps", save_steps=1, save_total_limit=1, load_best_model_at_end=True,
                      metric_for_best_model="loss", label_smoothing_factor=0.1)
    raw["engine"] = {"early_stopping_patience": 2}
    out = train(parse_recipe(raw))
    state = out["trainer"].state
    assert state.global_step < 20  # stopped early
    best = Path(state.best_model_checkpoint)
    kept = [p.name for _, p, ok in runs.checkpoints(tmp_path / "run") if ok]
    assert best.name in kept and f"checkpoint-{state.global_step}" in kept  # save_total_limit 1 kept best and newest
    assert best.name != f"checkpoint-{state.global_step}"  # (so rotation really had to spare it)
    saved, at_best = (load_file(str(d / "adapter_model.safetensors")) for d in (tmp_path / "run" / "adapter", best))
    assert saved.keys() == at_best.keys() and all(torch.equal(saved[k], at_best[k]) for k in saved)
    final = out["manifest"]["metrics"]["validation"]
    assert final["eval_validation_loss"] == pytest.approx(state.best_metric, abs=1e-6)  # the saved model is the best one
    reloaded = evaluate(load_run(tmp_path / "run"))["validation"]
    assert reloaded["f1_macro"] == pytest.approx(final["eval_validation_f1_macro"]) and reloaded["accuracy"] == final["eval_validation_accuracy"]
    # label smoothing reached the engine's own loss
    guard = out["trainer"].compute_loss_func
    logits, labels = torch.tensor([[2.0, -1.0]]), torch.tensor([0])
    assert guard.loss_fn({"logits": logits}, labels).item() == pytest.approx(F.cross_entropy(logits, labels, label_smoothing=0.1).item())


def test_label_smoothing_in_the_engine_loss():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]])
    labels = torch.tensor([0, 2])
    plain, smoothed = make_loss("single_label")({"logits": logits}, labels), make_loss("single_label", None, 0.2)({"logits": logits}, labels)
    expected = F.cross_entropy(logits, labels, label_smoothing=0.2)
    assert smoothed.item() == pytest.approx(expected.item()) and smoothed.item() > plain.item()
    soft = F.one_hot(labels, 3).float()  # soft targets (mixup) smoothed the same way as hard ones
    assert make_loss("single_label", None, 0.2)({"logits": logits}, soft).item() == pytest.approx(expected.item(), rel=1e-6)


def test_an_update_that_makes_weights_infinite_stops_the_run(tiny_bert, tmp_path):
    files = write_sentiment_csv(tmp_path)
    raw = text_recipe(tiny_bert, files, tmp_path / "run", max_steps=1, learning_rate=1e39)  # finite, but overflows fp32
    with pytest.raises(NonFiniteLoss, match=r"non-finite weights after step 1 .*learning_rate=1e\+39"):
        train(parse_recipe(raw))  # the loss of step 1 was finite: only the weights show it
    assert not (tmp_path / "run" / runs.MANIFEST).exists()


def test_finite_weights_callback_checks_trainable_parameters_only():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    model[0].requires_grad_(False)
    with torch.no_grad():
        model[0].weight.fill_(float("nan"))  # frozen: cannot have been changed by training
    guard = FiniteWeights(model)
    args, state = type("A", (), {"learning_rate": 1.0})(), type("S", (), {"global_step": 3})()
    guard.on_step_end(args, state, None)
    with torch.no_grad():
        model[1].weight.fill_(3e38)  # finite elements whose sum overflows: checked one by one, no false alarm
    guard.on_step_end(args, state, None)
    with torch.no_grad():
        model[1].bias[0] = np.inf
    with pytest.raises(NonFiniteLoss, match="after step 3 .in 1.bias"):
        guard.on_step_end(args, state, None)


def test_rotation_keeps_the_best_and_the_newest_complete_checkpoint(tmp_path):
    for step in (2, 4, 6, 8):
        ckpt = tmp_path / "checkpoints" / f"checkpoint-{step}"
        ckpt.mkdir(parents=True)
        runs.mark_complete(ckpt)
        time.sleep(0.01)
    runs.rotate(tmp_path, keep=1, protect=str(tmp_path / "checkpoints" / "checkpoint-2"))
    assert [p.name for _, p, _ in runs.checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-8"]
