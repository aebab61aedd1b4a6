"""Run the real CLI in a subprocess with a fault injected at a chosen point (a real signal to itself).

Faults: `kill_after_complete:N` (SIGKILL right after checkpoint-N is marked complete),
`kill_during_save:N` (SIGKILL after checkpoint-N's files are written, before its marker),
`term_at_step:N` (SIGTERM at the end of step N: the graceful-stop path),
`wait_at_step:N` (at the end of step N, wait until the file named by $SFT_HUB_TEST_GO exists).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sft_hub import runs

REPO = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import os, signal, sys
from sft_hub import callbacks, runs
kind, step = sys.argv[1].split(":") if sys.argv[1] != "none" else ("none", "0")
step = int(step)
if kind == "kill_after_complete":
    original = runs.mark_complete
    def mark(path):
        original(path)
        if path.name == f"checkpoint-{step}":
            os.kill(os.getpid(), signal.SIGKILL)
    runs.mark_complete = mark
elif kind == "kill_during_save":
    original = runs.mark_complete
    def mark(path):
        if path.name == f"checkpoint-{step}":
            os.kill(os.getpid(), signal.SIGKILL)
        original(path)
    runs.mark_complete = mark
elif kind == "term_at_step":
    original_end = callbacks.GracefulStop.on_step_end
    def on_step_end(self, args, state, control, **kw):
        if state.global_step == step:
            os.kill(os.getpid(), signal.SIGTERM)
        return original_end(self, args, state, control, **kw)
    callbacks.GracefulStop.on_step_end = on_step_end
elif kind == "wait_at_step":
    import time
    original_end = callbacks.GracefulStop.on_step_end
    def on_step_end(self, args, state, control, **kw):
        if state.global_step == step:
            open(os.environ["SFT_HUB_TEST_GO"] + ".waiting", "w").close()
            while not os.path.exists(os.environ["SFT_HUB_TEST_GO"]):
                time.sleep(0.05)
        return original_end(self, args, state, control, **kw)
    callbacks.GracefulStop.on_step_end = on_step_end
from sft_hub.cli import main
main(sys.argv[2:])
"""


def start_cli(fault: str, *args: str, env: dict | None = None) -> subprocess.Popen:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-c", SCRIPT, fault, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO, env=full_env)


def run_cli(fault: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-c", SCRIPT, fault, *args], capture_output=True, text=True, cwd=REPO, env=full_env, timeout=600)


def losses(run_dir):
    by_step = {}
    for line in (run_dir / runs.METRICS_LOG).read_text().splitlines():
        row = json.loads(line)
        if "loss" in row and "grad_norm" in row:
            by_step[row["step"]] = (row["loss"], row["grad_norm"])  # a resumed run re-logs steps: last one wins
    return by_step
