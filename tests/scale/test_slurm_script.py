"""scripts/slurm/node.sh: the main address from SLURM's node list, with and without scontrol (fast, no launch)."""

from __future__ import annotations

import os
import subprocess

import pytest
from launch import HERE, REPO

NODE = REPO / "scripts" / "slurm" / "node.sh"


def first_host(node_list: str, path: str) -> str:
    proc = subprocess.run(["bash", str(NODE), "--first-host", node_list], capture_output=True, text=True, env={**os.environ, "PATH": path})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.mark.parametrize("node_list, first", [("gpu[03-04,07],cpu1", "gpu03"), ("cpu1,gpu[1-2]", "cpu1"), ("a,b", "a"),
                                              ("node7", "node7"), ("x[5]", "x5"), ("10.0.0.1,10.0.0.2", "10.0.0.1")])
def test_first_host_without_scontrol(node_list, first):
    assert first_host(node_list, "/usr/bin:/bin") == first


def test_first_host_asks_scontrol_when_present():
    # the stand-in splits on commas only, so a bracketed list shows which parser answered
    assert first_host("b,a", f"{HERE / 'fake_slurm'}:/usr/bin:/bin") == "b"
    assert first_host("n[1-2]", f"{HERE / 'fake_slurm'}:/usr/bin:/bin") == "n[1-2]"


def test_node_script_needs_slurm_environment(tmp_path):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    proc = subprocess.run(["bash", str(NODE), str(tmp_path / "r.yaml")], capture_output=True, text=True, env=clean)
    assert proc.returncode != 0 and "SLURM_NODEID" in proc.stderr
