"""Speech recognition through the shared engine: exact accumulation, reload equality, predict / eval / export.

Offline: a tiny wav2vec2 CTC model built from a config; tone / noise clips per word (see test_speech_data).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from sft_hub import cli
from sft_hub.config import load_recipe, parse_recipe
from sft_hub.engine import train
from sft_hub.inference import evaluate, load_run, logits
from sft_hub.tasks import ctc
from test_speech_data import FSDD_ASR, MAP, TINY_CTC, make_word_clips

FSDD = Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd" / "recordings"
FAST = {"max_steps": 3, "per_device_train_batch_size": 4, "per_device_eval_batch_size": 4, "eval_strategy": "no",
        "save_strategy": "no", "logging_steps": 1, "learning_rate": 3e-3, "disable_tqdm": True, "seed": 0, "report_to": "none"}


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    return make_word_clips(tmp_path_factory.mktemp("words"))


def recipe(clips: Path, out: Path, strategy: dict | None = None, model: dict | None = None, **training) -> dict:
    return {"task": "speech_recognition",
            "model": {"name_or_path": "wav2vec2", "config": dict(TINY_CTC),
                      "feature_extractor": {"sampling_rate": 8000, "return_attention_mask": True}, **(model or {})},
            "data": {"source": "filenames", "data_dir": str(clips), "transcript_regex": r"^(\d)_", "transcript_map": dict(MAP),
                     "split_regex": {"test": r"_[0-4]\.wav$"}},
            "strategy": strategy or {"name": "full"}, "training": {"output_dir": str(out), **FAST, **training}}


def test_gradient_accumulation_is_exact_for_both_normalisations(tmp_path: Path) -> None:
    """16x2 and 32x1 give the same loss and grad norm: CTC summed, divided by the accumulated batch's count."""
    clips = make_word_clips(tmp_path / "clips", per_word=37)  # 64 training clips of 0.15-0.4 s: padding differs per micro-batch
    steps = {}
    for normalization in ("tokens", "samples"):
        for name, (bs, ga) in {"16x2": (16, 2), "32x1": (32, 1)}.items():
            out = tmp_path / f"{normalization}_{name}"
            raw = recipe(clips, out, model={"ctc_loss_normalization": normalization},
                         per_device_train_batch_size=bs, gradient_accumulation_steps=ga, max_steps=2)
            train(parse_recipe(raw))
            rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            steps[normalization, name] = [r for r in rows if "grad_norm" in r]
        for a, b in zip(steps[normalization, "16x2"], steps[normalization, "32x1"], strict=True):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
            assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    # The first step's summed loss is the same; divided by 32 utterances instead of their 3-5 characters each:
    ratio = steps["samples", "32x1"][0]["loss"] / steps["tokens", "32x1"][0]["loss"]
    assert 3 < ratio < 5


@pytest.mark.parametrize("strategy, saved", [({"name": "lora", "r": 4, "alpha": 8}, "adapter"), ({"name": "head"}, "head")])
def test_run_reloads_to_its_final_predictions(clips: Path, tmp_path: Path, strategy: dict, saved: str) -> None:
    out = train(parse_recipe(recipe(clips, tmp_path / "run", strategy)))
    manifest = out["manifest"]
    assert manifest["saved_as"] == saved and manifest["head_modules"] == ["lm_head"] and manifest["main_metric"]["name"] == "wer"
    assert manifest["labels"] == ["[PAD]", "[UNK]", "|", "e", "n", "o", "s", "v"]
    assert manifest["parameters"]["trainable"] < manifest["parameters"]["total"]
    trainer = out["trainer"]
    at_end = trainer.predict(trainer.eval_dataset).predictions  # argmax ids, -100 past each clip's frames
    first, second = load_run(tmp_path / "run"), load_run(tmp_path / "run")
    rows = first.task.load_data(first.info.recipe.data, 0).splits["test"]
    a, b = logits(first, rows), logits(second, rows)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ctc.frame_ids(a)[:, :at_end.shape[1]], at_end)
    again = evaluate(first)["test"]
    trained = manifest["metrics"]["test"]
    assert (again["wer"], again["cer"], again["num_examples"]) == (trained["eval_test_wer"], trained["eval_test_cer"], 10)


def test_cli_predict_eval_and_merged_export_load_with_auto_classes(clips: Path, tmp_path: Path, capsys) -> None:
    from transformers import AutoModelForCTC, AutoProcessor

    run = tmp_path / "fsdd_asr"
    overrides = [f"data.data_dir={clips}", f"training.output_dir={run}"] + [f"training.{k}={v!r}" for k, v in FAST.items()]
    raw = load_recipe(FSDD_ASR, overrides).raw
    raw["model"]["config"] = dict(TINY_CTC)  # the recipe's model, shrunk
    train(parse_recipe(raw))
    loaded = load_run(run)
    clip_a, clip_b = clips / "7_tone_3.wav", clips / "1_tone_0.wav"
    expected = ctc.transcripts(logits(loaded, loaded.task.read_inputs(None, [str(clip_a), str(clip_b)], None)), loaded.labels, "|")

    capsys.readouterr()
    cli.main(["predict", str(run), str(clip_a), str(clip_b)])
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{expected[0]}\t{clip_a}", f"{expected[1]}\t{clip_b}"]
    cli.main(["eval", str(run), "--json"])
    results = json.loads(capsys.readouterr().out)
    manifest = json.loads((run / "manifest.json").read_text())
    assert results["test"]["wer"] == manifest["metrics"]["test"]["eval_test_wer"] and 0 <= results["test"]["cer"]

    cli.main(["export", str(run), "--merge", "--out", str(tmp_path / "merged")])
    processor = AutoProcessor.from_pretrained(tmp_path / "merged")
    model = AutoModelForCTC.from_pretrained(tmp_path / "merged").eval()
    assert processor.tokenizer.get_vocab() == {t: i for i, t in enumerate(manifest["labels"])}
    samples, rate = sf.read(clip_b, dtype="float32")
    inputs = processor(samples, sampling_rate=rate, return_tensors="pt")
    with torch.no_grad():
        ids = model(**inputs).logits.argmax(-1)
    assert processor.batch_decode(ids)[0] == expected[1]  # plain transformers gives the run's transcript


@pytest.mark.slow
@pytest.mark.skipif(not (FSDD.is_dir() and os.environ.get("SFT_HUB_SLOW")), reason="set SFT_HUB_SLOW=1 (and have FSDD) to train the FSDD recipe (~15 min)")
def test_fsdd_recipe_reaches_wer_8_percent(tmp_path: Path) -> None:
    out = train(load_recipe(FSDD_ASR, [f"data.data_dir={FSDD}", f"training.output_dir={tmp_path / 'fsdd'}", "training.disable_tqdm=true"]))
    assert out["metrics"]["test"]["eval_test_wer"] <= 0.08  # measured 0.0667 (20/300); the aim of 0.05 is not reached
