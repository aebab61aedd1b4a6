"""A base fine-tuned on other labels starts the new task with a new head; on its own labels it keeps its head.

For each modality a tiny classifier is saved with labels A, then built as a base for labels B (same count,
so transformers alone would keep the old classifier) and for labels A again.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from audio_fixtures import model_cfg as audio_model_cfg
from image_fixtures import model_cfg as image_model_cfg

from sft_hub.config import from_dict
from sft_hub.tasks import audio, image, new_head, text

OLD, NEW = ["0", "1", "2"], ["5", "6", "7"]


def _saved_base(kind: str, folder: Path, tiny_bert: Path, labels: list[str]) -> tuple[dict[str, torch.Tensor], list[str]]:
    torch.manual_seed(1)
    if kind == "image":
        built = image.build_model(image_model_cfg(), labels)
    elif kind == "audio":
        built = audio.build_model(audio_model_cfg("ast"), labels)
    else:
        built = text.build_model(from_dict(text.ModelConfig, {"name_or_path": str(tiny_bert)}, "model"), labels)
    with torch.no_grad():  # a trained head, unlike any fresh initialisation (biases start at zero)
        for name in built.head_modules:
            for p in dict(built.model.named_modules())[name].parameters():
                p.add_(torch.rand_like(p) + 0.5)
    built.model.save_pretrained(folder)
    return {k: v.clone() for k, v in built.model.state_dict().items()}, built.head_modules


def _build(kind: str, folder: Path, labels: list[str]):
    if kind == "image":
        return image.build_model(image_model_cfg(name_or_path=str(folder)), labels)
    if kind == "audio":
        return audio.build_model(from_dict(audio.ModelConfig, {"name_or_path": str(folder)}, "model"), labels)
    return text.build_model(from_dict(text.ModelConfig, {"name_or_path": str(folder)}, "model"), labels)


@pytest.mark.parametrize("kind", ["image", "audio", "text"])
def test_other_labels_get_a_new_head_and_the_same_labels_keep_it(kind, tmp_path, tiny_bert, caplog):
    saved, head = _saved_base(kind, tmp_path / "base", tiny_bert, OLD)
    in_head = lambda key: key.startswith(tuple(h + "." for h in head))  # noqa: E731

    with caplog.at_level(logging.INFO, logger="sft_hub"):
        torch.manual_seed(0)
        renewed = _build(kind, tmp_path / "base", NEW).model.state_dict()
    assert "was trained for labels [0, 1, 2], not this task's [5, 6, 7]" in caplog.text
    head_keys = [k for k in saved if in_head(k) and saved[k].is_floating_point()]
    assert head_keys and all(not torch.equal(renewed[k], saved[k]) for k in head_keys)  # every head tensor is new
    assert all(torch.equal(renewed[k], saved[k]) for k in saved if not in_head(k))  # the backbone is the checkpoint's
    torch.manual_seed(0)
    again = _build(kind, tmp_path / "base", NEW).model.state_dict()
    assert all(torch.equal(again[k], renewed[k]) for k in head_keys)  # seeded: the run's seed gives the same head

    kept = _build(kind, tmp_path / "base", OLD).model.state_dict()
    assert all(torch.equal(kept[k], saved[k]) for k in saved)  # continuing on its own labels keeps the head


def test_linear_head_starts_as_the_loader_starts_a_missing_one(tmp_path, tiny_bert):
    _saved_base("image", tmp_path / "base", tiny_bert, OLD)
    fc = _build("image", tmp_path / "base", NEW).model.timm_model.fc
    assert torch.equal(fc.bias, torch.zeros(3)) and 0.01 < fc.weight.std().item() < 0.03  # initializer_range 0.02


def test_placeholder_or_missing_labels_say_nothing():
    class Cfg:
        def __init__(self, id2label):
            self.id2label = id2label

    assert new_head.checkpoint_labels(Cfg({0: "LABEL_0", 1: "LABEL_1"})) is None
    assert new_head.checkpoint_labels(Cfg({})) is None
    assert new_head.checkpoint_labels(Cfg({1: "pos", 0: "neg"})) == ["neg", "pos"]
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    before = model[0].weight.detach().clone()
    assert new_head.renew_head(model, ["0"], None, ["a", "b"]) == []
    assert new_head.renew_head(model, ["0"], ["a", "b"], ["a", "b"]) == []
    assert new_head.renew_head(model, ["0"], ["a", "b"], ["b", "a"]) == ["0"]  # reordered labels: another head
    assert not torch.equal(model[0].weight, before)
    assert new_head.renew_head(model, ["0"], ["x", "y"], ["a", "b"], fresh_keys=["0.weight", "0.bias"]) == []  # already new
