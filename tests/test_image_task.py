"""Image task: timm models (families, Hub layout, weights file), strategies with BatchNorm, and the CLI end to end.

Offline: tiny timm architectures built from their configs (no weights), images generated in tmp_path.
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
from image_fixtures import CLASSES, ROOT, make_folder, model_cfg

from sft_hub.config import from_dict
from sft_hub.errors import ConfigError
from sft_hub.strategies import parse_strategy
from sft_hub.tasks import image

# --- models and strategies ------------------------------------------------------------------------

@pytest.mark.parametrize("arch,size", [("test_resnet", 32), ("test_convnext", 32), ("test_efficientnet", 32), ("test_vit", 32)])
@pytest.mark.parametrize("strategy", ["full", "lora"])
def test_families_build_and_train_a_step(arch, size, strategy):
    torch.manual_seed(0)
    built = image.build_model(model_cfg(name_or_path=arch, image_size=size), ["a", "b", "c"])
    model = parse_strategy(strategy).apply(built.model, built.info)
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    out = model(pixel_values=torch.randn(4, 3, size, size)).logits
    torch.nn.functional.cross_entropy(out, torch.tensor([0, 1, 2, 0])).backward()
    torch.optim.SGD(params, lr=0.1).step()
    assert out.shape == (4, 3) and any(not torch.equal(a, b) for a, b in zip(before, params))
    if strategy == "lora":
        assert any("lora_A" in n for n, p in model.named_parameters() if p.requires_grad)


def _train_steps(model: torch.nn.Module, steps: int = 3) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.05)
    model.train()
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(6, 3, 32, 32, generator=gen) * 2 + 0.5  # far from the BN running stats: they would move
        loss = torch.nn.functional.cross_entropy(model(pixel_values=x).logits, torch.tensor([0, 1, 2, 0, 1, 2]))
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("strategy", ["lora", "head"])
def test_saved_adapter_reloads_to_identical_predictions_with_batchnorm(tmp_path, strategy):
    labels = ["a", "b", "c"]
    torch.manual_seed(0)
    built = image.build_model(model_cfg(), labels)
    built.model.save_pretrained(tmp_path / "base")  # the engine does this for a base built without weight files
    bn = {n: b.clone() for n, b in built.model.named_buffers() if "running" in n}
    control = image.build_model(model_cfg(name_or_path=str(tmp_path / "base")), labels).model
    _train_steps(control)  # sanity: unfrozen BN in train mode does move its statistics
    assert any(not torch.equal(b, dict(control.named_buffers())[n]) for n, b in bn.items())

    cfg = parse_strategy({"name": strategy, **({"r": 4} if strategy == "lora" else {})})
    model = cfg.apply(built.model, built.info)
    _train_steps(model)
    after = {n.removeprefix("base_model.model."): b for n, b in model.named_buffers() if "running" in n}
    assert all(torch.equal(bn[n], after[n]) for n in bn)  # frozen BN kept its statistics
    model.eval()
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(pixel_values=x).logits
    cfg.save(model, tmp_path / "run")
    base = image.build_model(model_cfg(name_or_path=str(tmp_path / "base")), labels).model
    reloaded = cfg.load(base, tmp_path / "run").eval()
    with torch.no_grad():
        # Same tensors, same buffers, same modes; CPU conv kernels may still round the last bit differently for
        # differently aligned allocations (seen with OMP_NUM_THREADS=1), so "identical" is to float32 precision.
        torch.testing.assert_close(reloaded(pixel_values=x).logits, expected, rtol=1e-5, atol=1e-9)
        assert not torch.equal(control.eval()(pixel_values=x).logits, expected)


def test_hub_layout_folder_and_weights_file(tmp_path):
    import timm
    from safetensors.torch import save_file
    from timm.models import _hub

    source = timm.create_model("test_resnet", num_classes=1000)
    _hub.save_for_hf(source, tmp_path / "hub", safe_serialization=True)  # what a timm/* Hub repo holds
    built = image.build_model(model_cfg(name_or_path=str(tmp_path / "hub")), ["x", "y"])
    assert [p.name for p in built.weight_files] == ["model.safetensors"] and built.head_modules == ["timm_model.fc"]
    assert torch.equal(built.model.timm_model.layer1[0].conv1.weight, source.layer1[0].conv1.weight)
    assert built.model.timm_model.fc.out_features == 2 and built.model.config.id2label == {0: "x", 1: "y"}
    assert image.load_processor(model_cfg(name_or_path=str(tmp_path / "hub"), image_size=None)).data_config["input_size"] == (3, 160, 160)

    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    from_file = image.build_model(model_cfg(weights_file=str(tmp_path / "w.safetensors")), ["x", "y"])
    assert torch.equal(from_file.model.timm_model.layer1[0].conv1.weight, source.layer1[0].conv1.weight)
    assert from_file.weight_files == [tmp_path / "w.safetensors"]
    save_file({"conv1.0.weight": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ConfigError, match="does not fit test_resnet"):
        image.build_model(model_cfg(weights_file=str(tmp_path / "bad.safetensors")), ["x", "y"])


def test_fixed_size_checkpoint_refuses_another_image_size(tmp_path):
    import timm
    from timm.models import _hub

    _hub.save_for_hf(timm.create_model("test_vit", num_classes=1000), tmp_path / "vit", safe_serialization=True)
    config = json.loads((tmp_path / "vit" / "config.json").read_text())
    config["pretrained_cfg"]["fixed_input_size"] = True  # as real ViT checkpoints (vit_base_patch16_224) declare
    (tmp_path / "vit" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="model.image_size: .* fixed 160 px"):
        image.build_model(model_cfg(name_or_path=str(tmp_path / "vit"), image_size=96), ["x", "y"])
    assert image.build_model(model_cfg(name_or_path=str(tmp_path / "vit"), image_size=None), ["x", "y"]).head_modules == ["timm_model.head"]


@pytest.mark.parametrize("raw,match", [
    ({"model": {"name_or_path": "resnet19"}}, r"model.name_or_path: 'resnet19' is not a timm architecture.*did you mean"),
    ({"model": {"name_or_path": "resnet18", "weights_file": "w.pth"}}, r"model.weights_file: file w.pth not found"),
    ({"data": {"builtin": "digits", "folder": "x"}}, r"data: give exactly one of folder, builtin or dataset"),
    ({"data": {"builtin": "mnist"}}, r"data.builtin: unknown built-in data 'mnist'"),
    ({"data": {"builtin": "digits", "scale": [0.5, 2.0]}}, r"data.scale"),
    ({"data": {"builtin": "digits", "auto_augment": "autoaug-m9"}}, r"data.auto_augment"),
])
def test_config_errors_name_the_field(raw, match):
    with pytest.raises(ConfigError, match=match):
        if "model" in raw:
            from_dict(image.ModelConfig, raw["model"], "model")
        else:
            from_dict(image.DataConfig, raw["data"], "data")


def test_image_recipes_parse():
    from sft_hub.config import load_recipe

    recipes = sorted((ROOT / "recipes" / "image_classification").glob("*.yaml"))
    assert len(recipes) >= 4
    for path in recipes:
        recipe = load_recipe(path)
        assert recipe.task == "image_classification" and recipe.description
        text = path.read_text()
        assert "accelerate launch --config_file accelerate_configs/multi_gpu.yaml -m sft_hub train" in text


# --- the real CLI, end to end ------------------------------------------------------------------------

def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    done = subprocess.run([sys.executable, "-m", "sft_hub", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_cli_train_predict_eval_end_to_end(tmp_path):
    folder = make_folder(tmp_path / "data")
    run = tmp_path / "run"
    _cli("train", str(ROOT / "recipes/image_classification/hymenoptera_resnet18_lora.yaml"),
         f"data.folder={folder}", "model.name_or_path=test_resnet", "model.image_size=32", "model.channels_last=true", "strategy.r=4",
         f"training.output_dir={run}", "training.max_steps=3", "training.per_device_train_batch_size=8",
         "training.dataloader_num_workers=0", "training.dataloader_persistent_workers=false", 'training.eval_strategy="no"', 'training.save_strategy="no"', cwd=tmp_path)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["labels"] == list(CLASSES) and manifest["saved_as"] == "adapter"
    assert manifest["base"]["ref"]["kind"] == "run" and manifest["data_info"]["skipped_images"] == 0
    assert (run / "adapter" / "adapter_model.safetensors").is_file() and (run / "processor" / image.PROCESSOR_FILE).is_file()

    images = sorted(str(p) for p in (folder / "val").rglob("*.*"))[:3]
    out = _cli("predict", str(run), *images, "--json", "--top-k", "2", cwd=tmp_path).stdout.strip().splitlines()
    preds = [json.loads(line) for line in out]
    assert [p["input"] for p in preds] == images and all(p["label"] in CLASSES and len(p["top"]) == 2 for p in preds)

    evaluated = json.loads(_cli("eval", str(run), "--json", cwd=tmp_path).stdout)
    trained = json.loads((run / "eval_results.json").read_text())
    assert evaluated["val"]["accuracy"] == trained["val"]["eval_val_accuracy"]  # the reloaded run predicts as trained
    assert evaluated["val"]["num_examples"] == 12

def test_engine_trains_with_mixup_soft_labels(tmp_path):
    from sft_hub import engine
    from sft_hub.config import parse_recipe

    folder = make_folder(tmp_path / "data")
    recipe = parse_recipe({
        "task": "image_classification", "model": {"name_or_path": "test_resnet", "image_size": 32},
        "data": {"folder": str(folder), "mixup": 0.4, "cutmix": 1.0, "label_smoothing": 0.1}, "strategy": {"name": "full"},
        "training": {"output_dir": str(tmp_path / "run"), "max_steps": 2, "per_device_train_batch_size": 7,
                     "gradient_accumulation_steps": 2, "save_strategy": "no", "report_to": "none"}})
    out = engine.train(recipe)
    losses = [json.loads(line).get("loss") for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert out["metrics"]["val"]["eval_val_num_examples"] == 12 and all(np.isfinite(v) for v in losses if v is not None)
