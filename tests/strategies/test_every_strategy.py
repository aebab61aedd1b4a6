"""Every registered strategy x text / image / audio tiny models: apply, train a step, save, reload to equal outputs.

Table-driven over `strategies.available()`, so a new strategy module is covered here without editing this file.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import write_tiny_bert
from audio_fixtures import model_cfg as audio_cfg
from image_fixtures import model_cfg as image_cfg

from sft_hub.base_model import tensors_sha256
from sft_hub.errors import ConfigError
from sft_hub.export import merge
from sft_hub.schema import from_dict
from sft_hub.strategies import available, parse_strategy, saves_whole_model
from sft_hub.strategies.base import frozen_params
from sft_hub.tasks import audio, image, text

LABELS = ["a", "b", "c"]
OPTIONS = {"lora": {"r": 4}, "partial": {"n": 1}, "adalora": {"init_r": 4, "target_r": 2}, "vera": {"r": 16},
           "oft": {"oft_block_size": 8}}  # the tiny audio models have one block; tiny layers are 32-64 wide


def _text(folder: Path | None, tmp: Path):
    return text, from_dict(text.ModelConfig, {"name_or_path": str(folder or write_tiny_bert(tmp / "bert")), "dropout": 0.0}, "model"), \
        {"input_ids": torch.tensor([[2, 7, 9, 11, 3], [2, 12, 8, 3, 0]]), "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])}


def _image(folder: Path | None, tmp: Path):
    cfg = image_cfg() if folder is None else image_cfg(name_or_path=str(folder))
    return image, cfg, {"pixel_values": torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))}


def _audio(folder: Path | None, tmp: Path):
    cfg = audio_cfg("wav2vec2") if folder is None else from_dict(audio.ModelConfig, {"name_or_path": str(folder)}, "model")
    return audio, cfg, {"input_values": torch.randn(2, 4000, generator=torch.Generator().manual_seed(0))}


MODALITIES = {"text": _text, "image": _image, "audio": _audio}


def _step(model: torch.nn.Module, batch: dict) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    logits = model(**batch).logits
    loss = torch.nn.functional.cross_entropy(logits, torch.arange(len(logits)) % len(LABELS))
    loss.backward()
    torch.optim.SGD(params, lr=0.5).step()


@pytest.mark.parametrize("modality", sorted(MODALITIES))
@pytest.mark.parametrize("name", [cls.name for cls in available()])
def test_apply_save_reload(tmp_path, name, modality):
    make = MODALITIES[modality]
    task, cfg, batch = make(None, tmp_path)
    torch.manual_seed(0)
    built = task.build_model(cfg, LABELS)
    assert built.info.modality == modality and built.info.head and built.info.blocks
    built.model.save_pretrained(tmp_path / "base")  # the engine keeps a base built from a config like this
    strategy = parse_strategy({"name": name, **OPTIONS.get(name, {})})
    unsupported = getattr(getattr(strategy, "peft_method", None), "unsupported", {})
    if built.info.family in unsupported:  # e.g. VeRA (Linear only) on ResNet: refused, naming method and family
        with pytest.raises(ConfigError, match=rf"strategy.name: {name} cannot adapt this {built.info.family} model: peft 0.21"):
            strategy.apply(built.model, built.info)
        return
    model = strategy.apply(built.model, built.info)
    frozen_before = tensors_sha256(frozen_params(model))
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert trainable
    if strategy.needs_training_loop:
        _step(model, batch)
        assert any(not torch.equal(p, trainable[n]) for n, p in model.named_parameters() if n in trainable)
    assert tensors_sha256(frozen_params(model)) == frozen_before  # frozen weights stayed frozen
    model.eval()
    with torch.no_grad():
        expected = model(**batch).logits
    saved = strategy.save(model, tmp_path / "run")
    assert saved == tmp_path / "run" / strategy.saved_as and any(saved.glob("*.safetensors"))
    assert not [f for f in saved.rglob("*") if f.suffix in (".bin", ".pt", ".pkl")]

    fresh_from = saved if saves_whole_model(strategy) else tmp_path / "base"
    fresh_task, fresh_cfg, _ = make(fresh_from, tmp_path)
    base = fresh_task.build_model(fresh_cfg, LABELS).model
    reloaded = parse_strategy(strategy.to_dict()).load(base, tmp_path / "run").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, expected, rtol=1e-5, atol=1e-6)
        if strategy.merges:  # what export --merge writes: one plain model with the same predictions
            merged = merge(reloaded)
            assert not [n for n, _ in merged.named_modules() if "lora_" in n or "modules_to_save" in n or "base_layer" in n]
            torch.testing.assert_close(merged(**batch).logits, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch,family,target", [
    ("test_resnet", "resnet", "conv1"), ("test_vit", "vit", "qkv"), ("test_convnext", "convnext", "fc1"),
])
def test_lora_default_targets_follow_the_family(arch, family, target):
    built = image.build_model(image_cfg(name_or_path=arch), LABELS)
    assert built.info.family == family
    model = parse_strategy({"name": "lora", "r": 2}).apply(built.model, built.info)
    adapted = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if hasattr(m, "lora_A")}
    assert target in adapted and "fc" not in adapted and "head" not in adapted  # the classifier is saved whole, not adapted
