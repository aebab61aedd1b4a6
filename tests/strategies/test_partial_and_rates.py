"""`partial` (which blocks train, BatchNorm, errors), discriminative learning rates and gradual unfreezing."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import text_recipe
from safetensors.torch import load_file
from image_fixtures import model_cfg as image_cfg

from sft_hub.config import parse_recipe
from sft_hub.engine import train
from sft_hub.errors import ConfigError
from sft_hub.schema import from_dict
from sft_hub.strategies import parse_strategy
from sft_hub.strategies.partial import FILE
from sft_hub.strategies.unfreeze import GradualUnfreeze
from sft_hub.tasks import image, text


def bert(tiny_bert):
    return text.build_model(from_dict(text.ModelConfig, {"name_or_path": str(tiny_bert)}, "model"), ["a", "b"])


def trainable_prefixes(model) -> set[str]:
    out = set()
    for n, p in model.named_parameters():
        if p.requires_grad:
            parts = n.split(".")
            out.add(".".join(parts[:4]) if parts[1] == "encoder" else ".".join(parts[:2]) if parts[0] == "bert" else parts[0])
    return out


@pytest.mark.parametrize("n,expected", [
    (0, {"classifier"}),
    (1, {"classifier", "bert.pooler", "bert.encoder.layer.1"}),
    (2, {"classifier", "bert.pooler", "bert.encoder.layer.1", "bert.encoder.layer.0"}),
    ("all", {"classifier", "bert.pooler", "bert.encoder.layer.1", "bert.encoder.layer.0", "bert.embeddings"}),
])
def test_partial_trains_the_top_n_blocks(tiny_bert, n, expected):
    built = bert(tiny_bert)
    model = parse_strategy({"name": "partial", "n": n}).apply(built.model, built.info)
    assert trainable_prefixes(model) == expected


@pytest.mark.parametrize("raw,message", [
    ({"name": "partial", "n": "some"}, r"strategy.n: a number of blocks \(0 or more\) or 'all', got 'some'"),
    ({"name": "partial", "n": -1}, r"strategy.n: a number of blocks"),
    ({"name": "partial", "layer_decay": 1.5}, r"strategy.layer_decay: must be in \(0, 1\]"),
    ({"name": "full", "head_lr": 0}, r"strategy.head_lr: must be a positive learning rate"),
    ({"name": "lora", "head_lr": -1.0}, r"strategy.head_lr: must be a positive learning rate"),
    ({"name": "full", "unfreeze_after": {"epoch": 1}}, r"strategy.unfreeze_after: give one of \{epochs: K\} or \{steps: K\}"),
    ({"name": "partial", "unfreeze_after": {"steps": 0}}, r"strategy.unfreeze_after.steps: must be a positive whole number"),
    ({"name": "adalora", "tinit": 5, "tfinal": 5, "total_step": 8}, r"strategy.total_step: The supplied schedule values don.t allow for a budgeting phase"),
])
def test_bad_options_name_the_field(raw, message):
    with pytest.raises(ConfigError, match=message):
        parse_strategy(raw)


def test_partial_with_more_blocks_than_the_model_has_is_refused(tiny_bert):
    built = bert(tiny_bert)
    with pytest.raises(ConfigError, match=r"strategy.n: 3 blocks, but this bert model has 2; use n: all"):
        parse_strategy({"name": "partial", "n": 3}).apply(built.model, built.info)


def test_partial_keeps_frozen_batchnorm_still_and_saves_the_trained_stats(tmp_path):
    built = image.build_model(image_cfg(), ["a", "b"])
    strategy = parse_strategy({"name": "partial", "n": 1})
    model = strategy.apply(built.model, built.info)
    bns = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    before = {n: m.running_mean.clone() for n, m in bns.items()}
    model.train()
    model(pixel_values=torch.randn(4, 3, 32, 32))
    moved = {n for n, m in bns.items() if not torch.equal(m.running_mean, before[n])}
    assert moved and all(n.startswith("timm_model.layer4.") for n in moved)  # only the trained (top) stage's BN
    saved = load_file(str(strategy.save(model, tmp_path) / FILE))
    assert {k.rsplit(".", 1)[0] for k in saved if k.endswith("running_mean")} == {n for n in bns if n.startswith("timm_model.layer4.")}
    assert not any(k.startswith(("timm_model.layer1.", "timm_model.conv1")) for k in saved)


def lrs_by_name(groups, model) -> dict[str, tuple[float, float | None]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: (g["lr"], g.get("weight_decay")) for g in groups for p in g["params"]}


def test_layer_decay_and_head_lr(tiny_bert):
    built = bert(tiny_bert)
    strategy = parse_strategy({"name": "full", "layer_decay": 0.5, "head_lr": 3.0})
    model = strategy.apply(built.model, built.info)
    lrs = lrs_by_name(strategy.param_groups(model, 1.0), model)
    assert len(lrs) == sum(1 for _ in model.parameters())
    assert lrs["classifier.weight"] == (3.0, None)  # the head: head_lr; weights decay (the run's weight_decay)
    assert lrs["bert.pooler.dense.weight"] == (1.0, None)  # final modules: depth 0
    assert lrs["bert.encoder.layer.1.attention.self.query.weight"] == (0.5, None)  # top block: depth 1
    assert lrs["bert.encoder.layer.0.output.dense.weight"] == (0.25, None)
    assert lrs["bert.embeddings.word_embeddings.weight"] == (0.125, None)  # below the blocks: depth L + 1
    assert lrs["bert.encoder.layer.0.output.dense.bias"] == (0.25, 0.0)  # biases and LayerNorm: no weight decay, as Trainer
    assert lrs["bert.embeddings.LayerNorm.weight"] == (0.125, 0.0)
    assert parse_strategy("full").param_groups(model, 1.0) is None  # no options: the Trainer's own groups


def test_peft_head_lr_groups_the_saved_head_apart(tiny_bert):
    built = bert(tiny_bert)
    strategy = parse_strategy({"name": "ia3", "head_lr": 0.1})
    model = strategy.apply(built.model, built.info)
    lrs = lrs_by_name(strategy.param_groups(model, 0.01), model)
    head = {n: v for n, v in lrs.items() if "modules_to_save" in n}
    assert head and all(lr == 0.1 for lr, _ in head.values())
    assert {lr for n, (lr, _) in lrs.items() if "ia3_l" in n} == {0.01}


def test_unfreeze_boundary_by_steps_and_by_epochs():
    p = torch.nn.Parameter(torch.zeros(1))
    by_steps = GradualUnfreeze([p], {"steps": 3})
    by_epochs = GradualUnfreeze([p], {"epochs": 1})
    assert [by_steps.due(SimpleNamespace(global_step=s)) for s in (0, 2, 3, 4)] == [False, False, True, True]
    assert [by_epochs.due(SimpleNamespace(epoch=e)) for e in (None, 0.5, 0.999, 1.0, 1.5)] == [False, False, False, True, True]
    by_steps.on_train_begin(None, SimpleNamespace(global_step=0), None)
    assert not p.requires_grad
    by_steps.on_step_begin(None, SimpleNamespace(global_step=3), None)
    assert p.requires_grad


def test_unfreeze_after_trains_only_the_head_until_the_boundary(tiny_bert, sentiment_files, tmp_path):
    strategy = {"name": "partial", "n": 1, "unfreeze_after": {"steps": 3}}
    out = train(parse_recipe(text_recipe(tiny_bert, sentiment_files, tmp_path / "run", strategy, max_steps=3)))
    base = bert(tiny_bert).model.state_dict()
    saved = load_file(str(tmp_path / "run" / "partial" / FILE))
    block = [k for k in saved if k.startswith("bert.encoder.layer.1.")]
    assert block and all(torch.equal(saved[k], base[k]) for k in block)  # held frozen for steps 1-3
    assert not torch.equal(saved["classifier.weight"], base.get("classifier.weight", torch.zeros(0)))
    in_optimizer = {id(p) for g in out["trainer"].optimizer.param_groups for p in g["params"]}
    model = out["trainer"].model
    assert all(id(p) in in_optimizer for n, p in model.named_parameters() if n.startswith("bert.encoder.layer.1."))  # up front
    assert out["manifest"]["parameters"]["trainable"] > sum(saved[k].numel() for k in saved if k.startswith("classifier"))
