"""Exact resume for every registered strategy that trains in the loop, on the tiny text model.

A run of 4 steps saves checkpoint-2; a second run dir holding only that checkpoint (what a run killed after it
leaves) resumes and must end bit-identical: same losses and grad norms for steps 3-4, same saved tensors.
The finished run then exports merged (`export --merge`), predicting as the run does.
AdaLoRA runs with a budget that reallocates ranks every step, so its allocator state crosses the checkpoint.
(A real SIGKILL across gradual unfreezing is in tests/reliability/test_resume.py.)
"""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from conftest import text_recipe
from safetensors.torch import load_file

from sft_hub import runs
from sft_hub.config import parse_recipe
from sft_hub.engine import train
from sft_hub.export import export_merged
from sft_hub.strategies import available

OPTIONS = {
    "adalora": {"init_r": 4, "target_r": 2, "tinit": 1, "tfinal": 1, "deltaT": 1},
    "vera": {"r": 16}, "partial": {"n": 1, "layer_decay": 0.5, "head_lr": 0.02}, "full": {"layer_decay": 0.8},
}


def losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / runs.METRICS_LOG).read_text().splitlines()]
    return {r["step"]: (r["loss"], r["grad_norm"]) for r in rows if "loss" in r and "grad_norm" in r}


def saved_tensors(run_dir, saved_as):
    out = {}
    for f in sorted((run_dir / saved_as).glob("*.safetensors")):
        out.update({f"{f.name}:{k}": v for k, v in load_file(str(f)).items()})
    return out


# lora's resume is checked with a real SIGKILL in tests/reliability/test_resume.py
@pytest.mark.parametrize("name", [cls.name for cls in available() if cls.needs_training_loop and cls.name != "lora"])
def test_resume_from_a_checkpoint_is_exact(tiny_bert, sentiment_files, tmp_path, name):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    raw = text_recipe(tiny_bert, sentiment_files, straight, {"name": name, **OPTIONS.get(name, {})}, max_steps=4,
                      save_strategy="steps", save_steps=2, per_device_train_batch_size=4, eval_strategy="no")
    raw["model"]["dropout"] = 0.1  # the RNG state must come back too
    out = train(parse_recipe(raw))
    saved_as = out["manifest"]["saved_as"]

    shutil.copytree(straight / "checkpoints" / "checkpoint-2", resumed / "checkpoints" / "checkpoint-2")
    raw["training"]["output_dir"] = str(resumed)
    for name_ in (runs.RECIPE, runs.LABELS):
        shutil.copy2(straight / name_, resumed / name_)
    (resumed / runs.RECIPE).write_text(yaml.safe_dump(raw))
    again = train(parse_recipe(raw))
    assert again["trainer"].state.global_step == 4
    a, b = losses(straight), losses(resumed)
    assert set(b) == {3, 4} and all(a[s] == b[s] for s in (3, 4))
    wa, wb = saved_tensors(straight, saved_as), saved_tensors(resumed, saved_as)
    assert wa and wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)
    merged = export_merged(straight, tmp_path / "merged")  # export --merge from the run dir: one standalone model
    assert merged["max_abs_diff"] is not None and merged["max_abs_diff"] <= 1e-5
    if name == "adalora":  # the budget really moved: ranks were masked, and the final adapter is shrunk to them
        pattern = json.loads((straight / "adapter" / "adapter_config.json").read_text())["rank_pattern"]
        assert pattern and not all(all(v) for v in pattern.values())
        assert (straight / "checkpoints" / "checkpoint-2" / "adalora_budget.safetensors").is_file()
