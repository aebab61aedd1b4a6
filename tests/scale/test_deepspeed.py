"""DeepSpeed ZeRO-2 / ZeRO-3 with 2 CPU processes (gloo) through the project's deepspeed_zero*.yaml.

accelerate 1.15 enables DeepSpeed only off-CPU; sft-hub hands accelerate's own DeepSpeed path the CPU
process group (sft_hub/cpu_sharding.py). DeepSpeed (installed
with DS_BUILD_OPS=0: `pip install -e .[deepspeed]`) picks its CPU accelerator. A LoRA adapter saved
under ZeRO-3 must hold whole tensors equal to the gathered parameters: the known failure is an
adapter of empty (partitioned) tensors.
"""

from __future__ import annotations

import json

import pytest
from launch import CONFIGS, ddp, finish, free_port, max_diff, rank_shas, reload_logits, saved_weights, start
from test_fsdp import TEXTS, recipe

pytestmark = pytest.mark.multiprocess
TOLERANCE = 1e-6  # |ZeRO - DDP| per weight after 4 SGD steps at lr 0.5 (measured: ~3e-11)


def deepspeed(config: str, path):
    return finish(start(["--config_file", str(CONFIGS / config), "--num_processes", "2", "--mixed_precision", "no",
                         "--main_process_port", str(free_port()), "-m", "sft_target", "train", str(path)]))


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory, tiny_bert):
    pytest.importorskip("deepspeed")  # here, not at import: collecting the default suite stays fast
    tmp = tmp_path_factory.mktemp("ddp_reference")
    out = {}
    for strategy in ("lora", "head"):
        proc = ddp(recipe(tmp, tiny_bert, strategy, strategy))
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[strategy] = tmp / strategy
    return out


@pytest.mark.parametrize("config, strategy", [("deepspeed_zero2.yaml", "lora"), ("deepspeed_zero3.yaml", "lora"),
                                              ("deepspeed_zero3.yaml", "head")])
def test_deepspeed_run_matches_ddp(ddp_runs, tiny_bert, tmp_path, config, strategy):
    proc = deepspeed(config, recipe(tmp_path, tiny_bert, "ds", strategy))
    assert proc.returncode == 0, proc.stderr[-3000:]
    shas = rank_shas(proc.stderr)
    assert set(shas) == {"0", "1"} and shas["0"] == shas["1"]
    run = tmp_path / "ds"
    manifest, reference = (json.loads((d / "manifest.json").read_text()) for d in (run, ddp_runs[strategy]))
    assert manifest["world_size"] == 2 and manifest["parameters"] == reference["parameters"]
    assert manifest["base"]["frozen_sha256"] == reference["base"]["frozen_sha256"]  # gathered ZeRO-3 base, unchanged
    got = saved_weights(run)
    assert got and all(t.numel() > 0 for t in got.values())  # whole tensors, not empty ZeRO-3 partitions
    diff = max_diff(got, saved_weights(ddp_runs[strategy]))
    print(f"{config} {strategy}: max |DeepSpeed - DDP| = {diff:.3g}")
    assert diff < TOLERANCE
    assert abs(reload_logits(run, TEXTS) - reload_logits(ddp_runs[strategy], TEXTS)).max() < 1e-4
