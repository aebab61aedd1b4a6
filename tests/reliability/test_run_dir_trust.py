"""One run per folder, nothing deleted that is not ours, and a failed start that leaves nothing behind."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
import yaml
from conftest import text_recipe, write_sentiment_csv
from faults import REPO, start_cli

from sft_hub import runs
from sft_hub.cli import main
from sft_hub.config import parse_recipe
from sft_hub.engine import train
from sft_hub.errors import RunError
from sft_hub.lock import LOCK, RunLock


def write_recipe(tmp_path, tiny_bert, out, name="r.yaml", **training):
    files = write_sentiment_csv(tmp_path)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(text_recipe(tiny_bert, files, out, **training)))
    return path


def run_main(capsys, *argv):
    capsys.readouterr()  # drop what earlier steps printed
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    return info.value.code, err


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.slow  # two real processes
def test_two_concurrent_trains_one_refused(tiny_bert, tmp_path):
    """Real processes: the second `sft-hub train` into a folder in use gets one line naming the holder."""
    out = tmp_path / "run"
    recipe = write_recipe(tmp_path, tiny_bert, out, max_steps=2)
    go = tmp_path / "go"
    first = start_cli("wait_at_step:1", "train", str(recipe), env={"SFT_HUB_TEST_GO": str(go)})
    try:
        while not (tmp_path / "go.waiting").exists():  # first holds the lock and has trained one step
            assert first.poll() is None, first.communicate()[1][-2000:]
            time.sleep(0.1)
        holder = json.loads((out / LOCK).read_text())
        assert holder["pid"] == first.pid and holder["host"] == socket.gethostname()
        second = subprocess.run([sys.executable, "-m", "sft_hub", "train", str(recipe)], capture_output=True, text=True,
                                cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"})
        lines = second.stderr.strip().splitlines()
        assert second.returncode == 2 and len(lines) == 1, second.stderr[-2000:]
        assert lines[0].startswith(f"error: {out} is in use by another sft-hub process: pid {first.pid} on {socket.gethostname()}")
    finally:
        go.touch()
        _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    steps = [json.loads(line)["step"] for line in (out / runs.METRICS_LOG).read_text().splitlines()]
    assert steps == sorted(steps) and not (out / LOCK).exists()  # one writer's log, lock released


def test_stale_lock_is_reported_and_taken_over(tiny_bert, tmp_path, caplog):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK).write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname(), "command": "train"}))
    recipe = write_recipe(tmp_path, tiny_bert, out, max_steps=1)
    main(["train", str(recipe)])
    assert "taking over the stale lock" in caplog.text and (out / runs.MANIFEST).is_file() and not (out / LOCK).exists()


def test_lock_from_another_host_and_a_live_holder_are_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK).write_text(json.dumps({"pid": 1, "host": "node-17", "command": "train"}))
    with pytest.raises(RunError, match=r"locked by pid 1 on node-17 .*another host; if that process is gone, delete"):
        RunLock(run, "train").acquire()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / LOCK).write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(), "command": "train"}))
        with pytest.raises(RunError, match=f"in use by another sft-hub process: pid {sleeper.pid}"):
            RunLock(run, "train").acquire()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_export_merge_takes_the_run_lock(tiny_bert, tmp_path, capsys):
    out = tmp_path / "run"
    train(parse_recipe(yaml.safe_load(write_recipe(tmp_path, tiny_bert, out, max_steps=1).read_text())))
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK).write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(), "command": "train"}))
        code, err = run_main(capsys, "export", str(out), "--merge", "--out", str(out / "merged"))
    finally:
        sleeper.kill()
        sleeper.wait()
    assert code == 2 and len(err) == 1 and f"in use by another sft-hub process: pid {sleeper.pid}" in err[0]
    assert not (out / "merged").exists()


def test_overwrite_refuses_a_folder_that_is_not_a_run(tiny_bert, tmp_path, capsys):
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "chapter1.tex").write_text("precious")
    recipe = write_recipe(tmp_path, tiny_bert, thesis, max_steps=1)
    code, err = run_main(capsys, "train", str(recipe), "--overwrite")
    assert code == 2 and len(err) == 1 and f"--overwrite: {thesis} is not an sft-hub run dir" in err[0]
    assert [p.name for p in thesis.iterdir()] == ["chapter1.tex"]
    code, err = run_main(capsys, "demo", "--output-dir", str(thesis))
    assert code == 2 and f"demo --output-dir {thesis}: the folder is not empty and holds no sft-hub demo run" in err[0]
    assert [p.name for p in thesis.iterdir()] == ["chapter1.tex"]


def test_overwrite_replaces_a_run_but_not_files_it_did_not_write(tiny_bert, tmp_path, capsys):
    out = tmp_path / "run"
    recipe = write_recipe(tmp_path, tiny_bert, out, max_steps=1)
    main(["train", str(recipe)])
    (out / "notes.txt").write_text("mine")
    code, err = run_main(capsys, "train", str(recipe), "--overwrite")
    assert code == 2 and "holds files sft-hub did not write (notes.txt)" in err[0] and (out / runs.MANIFEST).is_file()
    (out / "notes.txt").unlink()
    main(["train", str(recipe), "--overwrite"])
    assert (out / runs.MANIFEST).is_file()


def test_failed_start_writes_nothing_and_the_fix_is_accepted(tiny_bert, tmp_path, capsys):
    out = tmp_path / "nested" / "run"
    recipe = write_recipe(tmp_path, tiny_bert, out, max_steps=1)
    typo = yaml.safe_load(recipe.read_text())
    typo["model"]["name_or_path"] = "nobody/no-such-model"
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump(typo))
    code, err = run_main(capsys, "train", str(tmp_path / "typo.yaml"))
    assert code == 2 and err[0].startswith("error: model.name_or_path: 'nobody/no-such-model': cannot load")
    assert not (tmp_path / "nested").exists()  # not even the folder
    typo["model"]["name_or_path"] = str(tiny_bert)
    typo["strategy"]["target_modules"] = ["no_such_module"]  # fails after the model is built, before any write
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump(typo))
    code, err = run_main(capsys, "train", str(tmp_path / "typo.yaml"))
    assert code == 2 and err[0].startswith("error: strategy.target_modules:") and not (tmp_path / "nested").exists()
    main(["train", str(recipe)])
    assert (out / runs.MANIFEST).is_file()


def test_resume_accepts_only_a_checkpoint_of_the_same_recipe(tiny_bert, tmp_path, capsys):
    first = tmp_path / "first"
    recipe = write_recipe(tmp_path, tiny_bert, first, max_steps=2, save_strategy="steps", save_steps=2)
    main(["train", str(recipe)])
    ckpt = first / "checkpoints" / "checkpoint-2"
    assert json.loads((ckpt / "sft-hub-run.json").read_text())["labels"] == ["neg", "pos"]
    other = write_recipe(tmp_path, tiny_bert, tmp_path / "other", name="o.yaml", max_steps=4, learning_rate=0.02,
                         save_strategy="steps", save_steps=2)
    code, err = run_main(capsys, "train", str(other), "--resume", str(ckpt))
    assert code == 2 and len(err) == 1 and "trained with a different recipe (differs in training.learning_rate);" in err[0]
    assert not (tmp_path / "other").exists()
    longer = write_recipe(tmp_path, tiny_bert, tmp_path / "longer", name="l.yaml", max_steps=4, save_strategy="steps", save_steps=2)
    main(["train", str(longer), "--resume", str(ckpt)])  # more steps, another folder: the same run, continued
    assert [json.loads(x)["step"] for x in (tmp_path / "longer" / runs.METRICS_LOG).read_text().splitlines() if "loss" in x][0] == 3
