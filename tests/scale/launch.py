"""Helpers for the multi-process tests: launch sft-hub under `accelerate launch` on CPU, read results."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CONFIGS = REPO / "accelerate_configs"
TIMEOUT = 420


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE)]), **extra}


def start(args: list[str], extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    """`python -m accelerate.commands.launch ARGS` in its own process group (so a fault can kill it whole)."""
    return subprocess.Popen([sys.executable, "-m", "accelerate.commands.launch", *args], cwd=REPO, env=env(**(extra_env or {})),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: int = TIMEOUT) -> subprocess.CompletedProcess:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        err += "\n[test: killed after timeout]"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def ddp(recipe: Path) -> subprocess.CompletedProcess:
    return finish(start(["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                         "--dynamo_backend", "no", "--main_process_port", str(free_port()), "-m", "sft_target", "train", str(recipe)]))


def fsdp(recipe: Path, *extra: str, fault: str = "") -> subprocess.CompletedProcess:
    """The project's fsdp.yaml as shipped, with CPU-sized process count and fp32 (bf16 autocast on CPU is slow)."""
    return finish(start(["--config_file", str(CONFIGS / "fsdp.yaml"), "--num_processes", "2", "--mixed_precision", "no",
                         "--main_process_port", str(free_port()), *extra, "-m", "sft_target", "train", str(recipe)],
                        {"SFT_HUB_FAULT": fault}))


def rank_shas(stderr: str) -> dict[str, str]:
    return dict(re.findall(r"rank (\d+): trained weights sha256 ([0-9a-f]{64})", stderr))


def saved_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor the run saved (adapter/, model/ or head/)."""
    out = {}
    for f in sorted(run_dir.glob("*/*.safetensors")):
        if f.parent.name in ("adapter", "model", "head"):
            out.update(load_file(str(f)))
    return out


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    assert all(a[k].shape == b[k].shape for k in a)
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def write_recipe(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def reload_logits(run_dir: Path, texts: list[str]):
    from sft_hub.inference import load_run, logits

    loaded = load_run(run_dir)
    rows = loaded.task.read_inputs(loaded.info.recipe.data, texts, None)
    return logits(loaded, rows, 8)
