"""Audio through the shared engine: full / head / lora runs that reload to the same predictions, and the CLI.

Offline: tiny models built from configs, FSDD-style WAV fixtures generated in tmp_path (see test_audio_task).
The end-to-end test runs the real `python -m sft_hub train|predict|eval` on the FSDD recipe for a few steps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sft_hub.config import parse_recipe
from sft_hub.engine import train
from sft_hub.inference import evaluate, load_run, logits
from audio_fixtures import FSDD, FSDD_RECIPE, ROOT, TINY, make_clips, pretrained_folder

FAST = {"max_steps": 4, "per_device_train_batch_size": 4, "per_device_eval_batch_size": 64, "eval_strategy": "no",
        "save_strategy": "no", "logging_steps": 1, "learning_rate": 5e-3, "disable_tqdm": True, "seed": 0}


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    return make_clips(tmp_path_factory.mktemp("clips"))


def recipe(clips: Path, out: Path, kind: str, strategy: dict, **data) -> dict:
    name, config, fe = TINY[kind]
    return {"task": "audio_classification",
            "model": {"name_or_path": name, "config": dict(config), "feature_extractor": dict(fe)},
            "data": {"source": "filenames", "data_dir": str(clips), "label_regex": r"^(\d)_", "split_regex": {"test": r"_[0-4]\.wav$"}, **data},
            "strategy": strategy, "training": {"output_dir": str(out), **FAST}}


def test_head_run_on_a_scratch_model_reloads_to_its_final_predictions(clips: Path, tmp_path: Path) -> None:
    out = train(parse_recipe(recipe(clips, tmp_path / "run", "ast", {"name": "head"})))
    manifest = out["manifest"]
    assert manifest["saved_as"] == "head" and manifest["base"]["ref"] == {"kind": "run", "name": "audio-spectrogram-transformer", "path": "base"}
    assert (tmp_path / "run" / "base" / "model.safetensors").is_file()  # random base weights kept with the head
    assert manifest["data_info"]["sampling_rates"] == {"8000": 10, "16000": 10}
    assert_reloads_equal(tmp_path / "run", manifest)


def test_lora_run_on_a_pretrained_folder_reloads_to_its_final_predictions(clips: Path, tmp_path: Path) -> None:
    base = pretrained_folder(tmp_path / "w2v")
    raw = recipe(clips, tmp_path / "run", "wav2vec2", {"name": "lora", "r": 4, "alpha": 8}, max_duration=0.2)  # random crops
    raw["model"] = {"name_or_path": str(base), "freeze_feature_encoder": True, "feature_extractor": {"return_attention_mask": False}}
    out = train(parse_recipe(raw))
    manifest = out["manifest"]
    assert manifest["saved_as"] == "adapter" and manifest["head_modules"] == ["projector", "classifier"]
    assert list(manifest["base"]["files_sha256"]) == ["model.safetensors"] and manifest["base"]["ref"] == {"kind": "local", "name": str(base), "path": str(base)}
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file() and not (tmp_path / "run" / "base").exists()
    assert json.loads((tmp_path / "run" / "processor" / "preprocessor_config.json").read_text())["return_attention_mask"] is False
    assert_reloads_equal(tmp_path / "run", manifest)


def assert_reloads_equal(run: Path, manifest: dict) -> None:
    first, second = load_run(run), load_run(run)
    rows = first.task.load_data(first.info.recipe.data, 0).splits["test"]
    a, b = logits(first, rows), logits(second, rows)
    np.testing.assert_array_equal(a, b)  # two independent reloads agree exactly
    loss = torch.nn.functional.cross_entropy(torch.from_numpy(a), torch.tensor(rows["labels"])).item()
    trained = manifest["metrics"]["test"]
    assert loss == pytest.approx(trained["eval_test_loss"], abs=1e-5)  # ... and equal the model at the end of training
    assert evaluate(first)["test"]["accuracy"] == trained["eval_test_accuracy"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "sft_hub", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_cli_trains_predicts_and_evaluates_the_fsdd_recipe(clips: Path, tmp_path: Path) -> None:
    run = tmp_path / "fsdd_run"
    overrides = [f"data.data_dir={clips}", f"training.output_dir={run}"] + [f"training.{k}={v!r}" for k, v in FAST.items()]  # 'no' quoted: YAML reads bare no as false
    done = run_cli("train", str(FSDD_RECIPE), *overrides)
    assert f"run saved to {run}" in done.stdout and "test: loss=" in done.stdout
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["task"] == "audio_classification" and manifest["saved_as"] == "model" and manifest["labels"] == ["1", "7"]
    assert (run / "model" / "model.safetensors").is_file() and (run / "processor" / "preprocessor_config.json").is_file()

    stereo_16k, mono_8k = clips / "7_tone_3.wav", clips / "1_tone_0.wav"
    lines = run_cli("predict", str(run), str(stereo_16k), str(mono_8k), "--json", "--top-k", "2").stdout.strip().splitlines()
    items = [json.loads(line) for line in lines]
    assert [i["input"] for i in items] == [str(stereo_16k), str(mono_8k)]
    assert all(i["label"] in ("1", "7") and len(i["top"]) == 2 for i in items)

    results = json.loads(run_cli("eval", str(run), "--json").stdout)
    assert results["test"]["num_examples"] == 10
    assert results["test"]["accuracy"] == manifest["metrics"]["test"]["eval_test_accuracy"]

    bad = subprocess.run([sys.executable, "-m", "sft_hub", "predict", str(run), str(tmp_path / "nope.wav")], cwd=ROOT,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "nope.wav: audio file not found" in bad.stderr


@pytest.mark.slow
@pytest.mark.skipif(not (FSDD.is_dir() and os.environ.get("SFT_HUB_SLOW")), reason="set SFT_HUB_SLOW=1 (and have FSDD) to train the FSDD recipe (1-5 min)")
def test_fsdd_recipe_reaches_97_percent(tmp_path: Path) -> None:
    from sft_hub.config import load_recipe

    out = train(load_recipe(FSDD_RECIPE, [f"data.data_dir={FSDD}", f"training.output_dir={tmp_path / 'fsdd'}", "training.disable_tqdm=true"]))
    assert out["metrics"]["test"]["eval_test_accuracy"] >= 0.97
