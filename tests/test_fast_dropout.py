"""`sft_hub.fast_dropout`: the model's nn.Dropout layers through the compiled draws give torch's numbers bit for bit
(outputs, gradients, generator state), in a module and through the engine; torch's path where it does not apply."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
from torch import nn

from conftest import text_recipe
from sft_hub import fast_dropout, native
from sft_hub.config import parse_recipe
from sft_hub.engine import train

pytestmark = pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="no C compiler on this machine")


def _run(module: nn.Module, x: torch.Tensor):
    torch.manual_seed(1)
    y = module(x)
    (y.square() * torch.linspace(0, 1, y.shape[-1])).sum().backward()
    return y.detach(), [p.grad.clone() for p in module.parameters()], torch.get_rng_state()


def test_same_outputs_gradients_and_generator_state():
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(16, 32), nn.Dropout(0.1), nn.GELU(), nn.Linear(32, 4), nn.Dropout(0.3), nn.Dropout(0.0))
    fast = copy.deepcopy(ref)
    assert fast_dropout.install(fast) == 3 and native.available()
    x = torch.randn(5, 7, 16)
    (y_r, g_r, s_r), (y_f, g_f, s_f) = _run(ref, x), _run(fast, x)
    assert torch.equal(y_r, y_f) and torch.equal(s_r, s_f)
    assert all(torch.equal(a, b) for a, b in zip(g_r, g_f))
    assert (y_f == 0).any()  # dropout really dropped something
    fast.eval()
    assert torch.equal(fast(x), ref.eval()(x))  # eval: identity
    half = x.to(torch.bfloat16)
    torch.manual_seed(2)
    a = fast.train()[1](half)
    torch.manual_seed(2)
    assert torch.equal(a, nn.Dropout(0.1)(half))  # not float32: torch's own dropout
    assert fast_dropout.uninstall(fast) == 3 and fast_dropout.uninstall(fast) == 0


def test_engine_training_is_bit_identical_with_and_without(tiny_bert, sentiment_files, tmp_path, monkeypatch):
    runs = {}
    for name, enabled in (("native", True), ("torch", False)):
        monkeypatch.setattr(native, "_checked", not enabled)  # off: as if the kernel were unavailable
        monkeypatch.setattr(native, "_lib", None)
        raw = text_recipe(tiny_bert, sentiment_files, tmp_path / name, {"name": "full"}, max_steps=4, learning_rate=1e-3)
        raw["model"]["dropout"] = 0.1
        result = train(parse_recipe(raw))
        assert native.available() is enabled
        losses = [json.loads(line).get("loss") for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        runs[name] = ([v for v in losses if v is not None], result["manifest"]["trained_sha256"])
    assert len(runs["native"][0]) == 4
    assert runs["native"] == runs["torch"]  # every logged loss and the trained weights' fingerprint
