"""The run as an object: a run dir moved elsewhere without its training data still predicts and exports; eval
works from another working directory with relative data paths; BaseRef replaces the old string markers."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import text_recipe, write_sentiment_csv

from sft_hub.base_model import BaseRef
from sft_hub.cli import main
from sft_hub.errors import RunError
from sft_hub.runs import CHECK_INPUTS, MANIFEST_FORMAT, Run

SENTENCES = ["the movie was great", "a really awful plot"]


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.strip().splitlines()]


@pytest.mark.parametrize("strategy", [{"name": "lora", "r": 4, "alpha": 8, "target_modules": ["query", "value"]}, {"name": "head"}])
def test_moved_run_without_its_data_predicts_and_exports(tiny_bert, tmp_path, monkeypatch, capsys, strategy):
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    write_sentiment_csv(work / "data")
    monkeypatch.chdir(work)
    raw = text_recipe(tiny_bert, {"train": "data/train.csv", "validation": "data/validation.csv"}, Path("runs/r"), strategy)
    (work / "recipe.yaml").write_text(yaml.safe_dump(raw))
    main(["train", "recipe.yaml"])
    assert "run saved to runs/r" in capsys.readouterr().out
    run_dir = work / "runs" / "r"
    stored = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    assert stored["data"]["data_files"] == {"train": str(work / "data/train.csv"), "validation": str(work / "data/validation.csv")}
    assert (run_dir / CHECK_INPUTS).is_file()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["format"] == MANIFEST_FORMAT and manifest["base"]["ref"] == {"kind": "local", "name": str(tiny_bert), "path": str(tiny_bert)}
    main(["predict", str(run_dir), *SENTENCES, "--json"])
    before = _json_lines(capsys.readouterr().out)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative data paths were recorded absolute: eval works from any folder
    main(["eval", str(run_dir), "--json"])
    metrics = json.loads(capsys.readouterr().out)["validation"]
    assert metrics["accuracy"] == pytest.approx(manifest["metrics"]["validation"]["eval_validation_accuracy"], abs=1e-6)

    moved = tmp_path / "moved" / "r"
    shutil.move(str(run_dir), str(moved))
    shutil.rmtree(work / "data")
    main(["predict", str(moved), *SENTENCES, "--json"])
    assert _json_lines(capsys.readouterr().out) == before
    main(["export", str(moved), "--merge", "--out", str(tmp_path / "merged")])
    out = capsys.readouterr().out
    assert "merged model written to" in out and "max |logit diff| vs the run: " in out
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    with pytest.raises(SystemExit) as exit_info:  # eval needs the data: a clear error naming the file
        main(["eval", str(moved)])
    assert exit_info.value.code == 2 and "data.data_files.train: file" in capsys.readouterr().err


def test_format_1_run_without_check_inputs_still_loads_and_exports(tiny_bert, tmp_path, capsys):
    files = write_sentiment_csv(tmp_path)
    run_dir = tmp_path / "run"
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(text_recipe(tiny_bert, files, run_dir)))
    main(["train", str(tmp_path / "recipe.yaml")])
    capsys.readouterr()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    ref = manifest["base"].pop("ref")
    manifest["base"]["resolved"] = ref["path"]  # what format 1 wrote
    manifest["format"] = "sft-hub-run/1"
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    (run_dir / CHECK_INPUTS).unlink()
    run = Run.open(run_dir)
    assert run.base == BaseRef("local", str(tiny_bert), path=str(tiny_bert)) and run.strategy.name == "lora"
    main(["export", str(run_dir), "--merge", "--out", str(tmp_path / "with_data")])
    assert "max |logit diff| vs the run" in capsys.readouterr().out  # rows from its data, as before
    for f in files.values():
        os.remove(f)
    main(["export", str(run_dir), "--merge", "--out", str(tmp_path / "without_data")])
    assert "check skipped: the run saved no check inputs and its data is unavailable" in capsys.readouterr().out
    assert (tmp_path / "without_data" / "model.safetensors").is_file()


def test_open_refuses_what_is_not_a_finished_run(tmp_path):
    with pytest.raises(RunError, match="not found"):
        Run.open(tmp_path / "nothing")
    (tmp_path / "half").mkdir()
    with pytest.raises(RunError, match=r"manifest.json: not found; is .*half a finished sft-hub run\?"):
        Run.open(tmp_path / "half")


def test_base_refs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "local").mkdir()
    assert BaseRef.pretrained("local") == BaseRef("local", "local", path=str(tmp_path / "local"))
    hub = BaseRef.pretrained("google-bert/bert-base-uncased", "abc123")
    assert hub == BaseRef("hub", "google-bert/bert-base-uncased", revision="abc123", hub_id="google-bert/bert-base-uncased")
    embedded = BaseRef.pretrained("embedded/all-MiniLM-L6-v2")
    assert embedded.kind == "embedded" and embedded.hub_id == "sentence-transformers/all-MiniLM-L6-v2"
    scratch = BaseRef.scratch("resnet18")
    in_run = scratch.saved_in_run()
    assert scratch.from_scratch and in_run.from_scratch and not hub.from_scratch and not embedded.from_scratch
    assert in_run.source(tmp_path / "run") == str(tmp_path / "run" / "base") and hub.source(tmp_path) == hub.name
    for ref in (hub, embedded, scratch, in_run):
        assert BaseRef.from_manifest({"ref": ref.to_dict()}) == ref
    # format 1 manifests recorded a string marker in `resolved`
    assert BaseRef.from_manifest({"name_or_path": "resnet18", "resolved": "base"}).kind == "run"
    assert BaseRef.from_manifest({"name_or_path": "resnet18", "resolved": "config"}) == scratch
    assert BaseRef.from_manifest({"name_or_path": "embedded/all-MiniLM-L6-v2", "resolved": "/somewhere"}) == embedded
    assert BaseRef.from_manifest({"name_or_path": "org/m", "revision": "r1", "resolved": "org/m"}) == BaseRef("hub", "org/m", "r1", hub_id="org/m")
