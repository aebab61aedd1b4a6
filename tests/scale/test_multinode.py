"""Several machines: two launchers on this machine act as two nodes over the loopback, one process each.

The first test uses the project's accelerate_configs/multi_node.yaml with only the address and the rank
edited (plus, on the command line, this machine's sizes: 2 processes in all, fp32 on CPU). The second
runs scripts/slurm/train.sbatch for a two-node job, with stand-ins for `srun` and `scontrol`
(tests/scale/fake_slurm) that run each node's part on this machine: the job is signalled mid-run as on
preemption, both ranks checkpoint at the same step, the job requeues itself, and the requeued job
resumes to the same weights as an uninterrupted two-node run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import pytest
from conftest import text_recipe, write_sentiment_csv
from launch import CONFIGS, HERE, REPO, env, finish, free_port, max_diff, rank_shas, saved_weights, start, write_recipe

from sft_hub import runs

pytestmark = pytest.mark.multiprocess
LORA = {"name": "lora", "r": 4, "alpha": 8, "lora_dropout": 0.1, "target_modules": ["query", "value"]}


def recipe(tmp_path, tiny_bert, name):
    files = write_sentiment_csv(tmp_path, n_train=40, n_val=7)
    raw = text_recipe(tiny_bert, files, tmp_path / name, LORA, max_steps=6, per_device_train_batch_size=4)
    raw["model"]["dropout"] = 0.1  # dropout on: the resume must restore every rank's RNG state
    return write_recipe(tmp_path / f"{name}.yaml", raw)


def node_config(tmp_path, rank: int):
    """accelerate_configs/multi_node.yaml as shipped, with only the address and the rank edited."""
    text = (CONFIGS / "multi_node.yaml").read_text()
    text = re.sub(r"(?m)^main_process_ip: .*$", "main_process_ip: 127.0.0.1", text)
    text = re.sub(r"(?m)^machine_rank: .*$", f"machine_rank: {rank}", text)
    path = tmp_path / f"node{rank}.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tiny_bert):
    """One uninterrupted two-node run (rank 0's and rank 1's launcher output, and the run dir)."""
    tmp = tmp_path_factory.mktemp("two_nodes")
    path, port = recipe(tmp, tiny_bert, "run"), str(free_port())
    nodes = [start(["--config_file", str(node_config(tmp, rank)), "--num_processes", "2", "--mixed_precision", "no",
                    "--main_process_port", port, "-m", "sft_target", "train", str(path)]) for rank in (0, 1)]
    return [finish(p) for p in nodes], tmp / "run"


def test_two_machines_train_one_run_written_by_global_rank_0(straight):
    (node0, node1), run_dir = straight
    assert node0.returncode == 0 and node1.returncode == 0, node0.stderr[-2000:] + node1.stderr[-2000:]
    sha0, sha1 = rank_shas(node0.stderr), rank_shas(node1.stderr)
    assert set(sha0) == {"0"} and set(sha1) == {"1"} and sha0["0"] == sha1["1"]  # one rank per machine, same weights
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and manifest["trained_sha256"] == sha0["0"]
    assert "run saved to" in node0.stdout and "run saved to" not in node1.stdout  # only global rank 0 writes
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines() if "grad_norm" in line]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_slurm_job_preempted_requeues_and_resumes(straight, tmp_path, tiny_bert):
    path, log, paused = recipe(tmp_path, tiny_bert, "run"), tmp_path / "slurm.log", tmp_path / "paused"
    job_env = env(PATH=f"{HERE / 'fake_slurm'}{os.pathsep}{os.environ['PATH']}", FAKE_SLURM_LOG=str(log),
                  SLURM_JOB_ID="4242", SLURM_NNODES="2", SLURM_JOB_NODELIST="127.0.0.1,127.0.0.2", SLURM_SUBMIT_DIR=str(REPO),
                  SFT_HUB_PROCS_PER_NODE="1", SFT_HUB_ACCELERATE_ARGS="--mixed_precision no", SFT_HUB_MAIN_PORT=str(free_port()),
                  PYTHON=os.environ.get("PYTHON", __import__("sys").executable), SFT_HUB_MODULE="sft_target")

    def sbatch(**extra):
        return subprocess.Popen(["bash", "scripts/slurm/train.sbatch", str(path)], cwd=REPO, env={**job_env, **extra},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)

    job = sbatch(SFT_HUB_FAULT=f"pause_at_step:3:{paused}")
    deadline = time.monotonic() + 300
    while not paused.exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert paused.exists(), finish(job).stderr[-3000:]
    job.send_signal(signal.SIGTERM)  # what `#SBATCH --signal=B:TERM@300` does before the time limit
    first = finish(job)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "node 0/2: main 127.0.0.1:" in first.stderr and "node 1/2: main 127.0.0.1:" in first.stderr
    assert log.read_text().splitlines() == ["requeue 4242"]
    out = tmp_path / "run"
    assert runs.latest_complete_checkpoint(out).name == "checkpoint-3" and not (out / "manifest.json").exists()
    assert first.stderr.count("stopped by SIGTERM at step 3") == 2  # both ranks, same step

    second = finish(sbatch())  # the requeued job
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming from" in second.stderr and "checkpoint-3" in second.stderr and "finished:" in second.stderr
    assert log.read_text().splitlines() == ["requeue 4242"]  # not requeued again
    shas = rank_shas(second.stderr)
    assert set(shas) == {"0", "1"} and shas["0"] == shas["1"]
    diff = max_diff(saved_weights(out), saved_weights(straight[1]))
    print(f"max |resumed - uninterrupted| = {diff:.3g}")
    assert diff == 0.0  # exact resume: same data order, RNG states and reductions as the uninterrupted run
