"""Persistence for image and audio runs, as for text: exact resume after SIGKILL, merged export that loads
with the HF class alone, and a push dry-run folder that loads to the same predictions with a Hub card.

Image: a tiny timm ResNet from scratch (its base kept in the run dir), LoRA with dropout, random-crop and
flip augmentation. Audio: LoRA on a tiny pretrained wav2vec2 folder, random 0.2 s training crops.
"""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest
import yaml
from faults import losses, run_cli
from safetensors.torch import load_file
from audio_fixtures import make_clips, pretrained_folder
from image_fixtures import make_folder

from sft_hub import runs
from sft_hub.hub import push
from sft_hub.inference import LoadedRun, load_run, logits

TRAIN = dict(per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=4, save_strategy="steps", save_steps=2,
             eval_strategy="no", learning_rate=5e-3, logging_steps=1, disable_tqdm=True, seed=0, dataloader_num_workers=0)
LORA = {"name": "lora", "r": 4, "alpha": 8, "lora_dropout": 0.1}


def image_recipe(tmp, out):
    folder = tmp / "images" if (tmp / "images").exists() else make_folder(tmp / "images")
    return {"task": "image_classification", "model": {"name_or_path": "test_resnet", "image_size": 32},
            "data": {"folder": str(folder), "train_split": "train", "eval_splits": ["val"]},
            "strategy": LORA, "training": {"output_dir": str(out), **TRAIN}}


def audio_recipe(tmp, out):
    clips = tmp / "clips" if (tmp / "clips").exists() else make_clips(tmp / "clips")
    base = tmp / "w2v" if (tmp / "w2v").exists() else pretrained_folder(tmp / "w2v")
    return {"task": "audio_classification",
            "model": {"name_or_path": str(base), "freeze_feature_encoder": True, "feature_extractor": {"return_attention_mask": False}},
            "data": {"source": "filenames", "data_dir": str(clips), "label_regex": r"^(\d)_", "split_regex": {"test": r"_[0-4]\.wav$"},
                     "max_duration": 0.2},
            "strategy": LORA, "training": {"output_dir": str(out), **TRAIN}}


RECIPES = {"image": image_recipe, "audio": audio_recipe}
AUTO = {"image": "AutoModelForImageClassification", "audio": "AutoModelForAudioClassification"}


def write(tmp, kind, name):
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(RECIPES[kind](tmp, tmp / name)))
    return path, tmp / name


def eval_rows(loaded: LoadedRun):
    data = loaded.task.load_data(loaded.info.recipe.data, 0)
    return data.splits[data.eval_splits[0]]


@pytest.fixture(scope="module", params=["image", "audio"])
def finished(request, tmp_path_factory):
    """A straight 4-step run and one SIGKILLed right after checkpoint 2, then resumed by the same command."""
    tmp = tmp_path_factory.mktemp(request.param)
    straight, straight_dir = write(tmp, request.param, "straight")
    crashed, crashed_dir = write(tmp, request.param, "crashed")
    done = run_cli("none", "train", str(straight))
    assert done.returncode == 0, done.stderr[-3000:]
    killed = run_cli("kill_after_complete:2", "train", str(crashed))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert runs.latest_complete_checkpoint(crashed_dir).name == "checkpoint-2" and not (crashed_dir / "manifest.json").exists()
    resumed = run_cli("none", "train", str(crashed))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr and "checkpoint-2" in resumed.stderr
    return request.param, straight_dir, crashed_dir


def test_sigkill_then_resume_is_exact(finished):
    _, straight, crashed = finished
    a, b = losses(straight), losses(crashed)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    assert all(a[s] == b[s] for s in (3, 4))  # the same losses and grad norms after the resume point
    wa, wb = (load_file(str(d / "adapter" / "adapter_model.safetensors")) for d in (straight, crashed))
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)  # bit-identical adapters on CPU


def test_export_merge_loads_with_the_auto_class_alone(finished, tmp_path):
    import transformers

    from sft_hub.export import export_merged

    kind, run, _ = finished
    result = export_merged(run, tmp_path / "merged")
    assert result["max_abs_diff"] <= 1e-5
    assert "model.safetensors" in {p.name for p in (tmp_path / "merged").iterdir()}
    standalone = getattr(transformers, AUTO[kind]).from_pretrained(tmp_path / "merged").eval()
    loaded = load_run(run)
    rows = eval_rows(loaded)
    got = logits(LoadedRun(loaded.info, loaded.task, standalone, loaded.processor), rows)
    np.testing.assert_allclose(got, logits(loaded, rows), atol=1e-5)


@pytest.mark.parametrize("merged", [False, True])
def test_push_dry_run_folder_loads_and_has_a_hub_card(finished, tmp_path, merged):
    import transformers
    from huggingface_hub import ModelCard
    from peft import PeftModel

    kind, run, _ = finished
    folder = tmp_path / "upload"
    push(run, f"someone/tiny-{kind}", merged=merged, dry_run=folder)
    card = ModelCard.load(folder / "README.md")
    meta = card.data.to_dict()
    assert meta["pipeline_tag"] == f"{kind}-classification" and meta["library_name"] == ("transformers" if merged else "peft")
    assert any(r.metric_type == "accuracy" and 0 <= r.metric_value <= 1 for r in card.data.eval_results)
    assert not [p for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    loaded = load_run(run)
    if merged:
        model = getattr(transformers, AUTO[kind]).from_pretrained(folder)
    else:
        base_cfg = loaded.info.recipe.model
        if kind == "image":  # a from-scratch base lives in the run dir, and the card says so
            import dataclasses

            assert "trained from scratch" in card.text.lower() and meta.get("base_model") is None
            base_cfg = dataclasses.replace(base_cfg, name_or_path=str(run / "base"))
        model = PeftModel.from_pretrained(loaded.task.build_model(base_cfg, loaded.labels).model, folder)
    rows = eval_rows(loaded)
    got = logits(LoadedRun(loaded.info, loaded.task, model.eval(), loaded.processor), rows)
    np.testing.assert_allclose(got, logits(loaded, rows), atol=1e-5)
    assert json.loads((folder / "manifest.json").read_text())["task"] == f"{kind}_classification"
