"""The strategy registry: lookup, typed configs with errors naming `strategy.<field>`, peft pass-through, the listing."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import text_recipe, write_tiny_bert

from sft_hub import strategies
from sft_hub.cli import main
from sft_hub.config import parse_recipe
from sft_hub.engine import train
from sft_hub.errors import ConfigError
from sft_hub.schema import from_dict
from sft_hub.strategies import available, get, parse_strategy, register
from sft_hub.strategies.base import Strategy
from sft_hub.tasks import text


def test_registered_strategies_follow_the_protocol():
    names = [cls.name for cls in available()]
    assert {"full", "head", "lora"} <= set(names) and names == sorted(names)
    for cls in available():
        assert get(cls.name) is cls and dataclasses.is_dataclass(cls.Config)
        instance = parse_strategy(cls.name)
        assert isinstance(instance, Strategy) and isinstance(instance.config, cls.Config)
        assert instance.to_dict() == {"name": cls.name} and isinstance(cls.saved_as, str) and isinstance(cls.merges, bool)
    assert (get("full").saved_as, get("head").saved_as, get("lora").saved_as) == ("model", "head", "adapter")


def test_options_round_trip_through_to_dict():
    lora = parse_strategy({"name": "lora", "r": 4, "alpha": 16, "dropout": 0.1, "target_modules": ["query", "value"], "use_rslora": True, "bias": "none"})
    assert lora.config.lora_alpha == 16 and lora.config.lora_dropout == 0.1 and lora.config.use_rslora is True
    # options that differ from peft's defaults, under their peft names (bias: none is the default)
    assert lora.to_dict() == {"name": "lora", "r": 4, "target_modules": ["query", "value"], "lora_alpha": 16, "lora_dropout": 0.1, "use_rslora": True}
    assert parse_strategy(lora.to_dict()).to_dict() == lora.to_dict()
    assert parse_strategy({}).name == "full"


@pytest.mark.parametrize("raw,message", [
    ({"name": "lorra"}, r"strategy.name: unknown strategy 'lorra'; did you mean 'lora'\?"),
    ({"name": "lora", "dropout": 5.0}, r"strategy.lora_dropout: must be a probability between 0 and 1, got 5.0"),
    ({"name": "lora", "lora_dropout": -0.5}, r"strategy.lora_dropout: must be a probability"),
    ({"name": "lora", "r": 0}, r"strategy.r: must be a positive number, got 0"),
    ({"name": "lora", "r": "eight"}, r"strategy.r: expected int, got str 'eight'"),
    ({"name": "lora", "alpha": -1}, r"strategy.lora_alpha: must be a positive number"),
    ({"name": "lora", "rr": 4}, r"strategy.rr: unknown key; did you mean 'r'\?"),
    ({"name": "lora", "bias": "some"}, r"strategy.bias: 'some' is not one of 'none', 'all', 'lora_only'"),
    ({"name": "lora", "use_dora": "yes"}, r"strategy.use_dora: expected bool"),
    ({"name": "lora", "alpha": 8, "lora_alpha": 16}, r"strategy.lora_alpha: given twice"),
    ({"name": "lora", "layers_to_transform": [0], "target_modules": "query"}, r"strategy.layers_to_transform: "),
    ({"name": "head", "r": 4}, r"strategy.r: unknown key"),
    ({"name": "lora", "nme": "lora"}, r"strategy.nme: unknown key; did you mean 'name'\?"),
    ({"name": "lora", "dropuot": 0.1}, r"strategy.dropuot: unknown key; did you mean 'dropout'\?"),
    ("full ", r"strategy.name: unknown strategy 'full '"),
])
def test_bad_options_name_the_field(raw, message):
    with pytest.raises(ConfigError, match=message):
        parse_strategy(raw)


def test_register_checks_the_class():
    class Incomplete:
        name = "incomplete"

    with pytest.raises(TypeError, match="missing class attribute 'Config'"):
        register(Incomplete)
    clash = type("OtherFull", (), {k: getattr(get("full"), k) for k in ("name", "Config", "saved_as", "merges", "needs_training_loop")})
    with pytest.raises(TypeError, match="registered twice"):
        register(clash)
    assert "incomplete" not in [c.name for c in strategies.available()]


@pytest.mark.parametrize("options,check", [
    ({"use_dora": True}, lambda model: any("lora_magnitude_vector" in n for n, _ in model.named_parameters())),
    ({"use_rslora": True, "r": 4, "alpha": 8}, lambda model: model.peft_config["default"].use_rslora and
        model.base_model.model.bert.encoder.layer[0].attention.self.query.scaling["default"] == pytest.approx(8 / 4 ** 0.5)),
])
def test_lora_variants_pass_through_to_peft(tmp_path, options, check):
    folder = write_tiny_bert(tmp_path / "bert")
    built = text.build_model(from_dict(text.ModelConfig, {"name_or_path": str(folder)}, "model"), ["a", "b"])
    model = parse_strategy({"name": "lora", **options}).apply(built.model, built.info)
    assert check(model)
    targets = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if hasattr(m, "lora_A")}
    assert targets == {"query", "value"}  # text: peft's own defaults for BERT
    assert model.peft_config["default"].modules_to_save == ["classifier"]  # the task's head, from ModelInfo


def test_target_modules_that_match_nothing_are_named(tmp_path):
    folder = write_tiny_bert(tmp_path / "bert")
    built = text.build_model(from_dict(text.ModelConfig, {"name_or_path": str(folder)}, "model"), ["a", "b"])
    with pytest.raises(ConfigError, match=r"strategy.target_modules: "):
        parse_strategy({"name": "lora", "target_modules": ["no_such_layer"]}).apply(built.model, built.info)


def test_recipes_strategies_lists_every_strategy_with_options(capsys):
    main(["recipes", "--strategies"])
    out = capsys.readouterr().out
    blocks = {b.split(":", 1)[0]: b for b in ("\n" + out).split("\n") if b and not b.startswith(" ")}
    for cls in available():
        assert f"{cls.name}: saved_as={cls.saved_as} merges={str(cls.merges).lower()}" in out
    assert set(blocks) == {cls.name for cls in available()}
    lora = out.split("lora: ", 1)[1]
    assert "  r: 8\n" in lora and "  lora_alpha (alias: alpha): 8\n" in lora and "  lora_dropout (alias: dropout): 0.0\n" in lora
    assert "  use_dora: False\n" in lora and "  use_rslora: False\n" in lora
    assert "head: saved_as=head merges=true\n  cache_frozen: 'auto'\n  cache_dir: None\n" in out
    assert "full: saved_as=model merges=true\n  layer_decay: None\n  head_lr: None\n  unfreeze_after: None\n" in out
    assert "partial: saved_as=partial merges=true\n" in out and "  n: 2\n" in out.split("partial: ", 1)[1]
    assert "  cache_frozen: 'auto'\n" in out.split("partial: ", 1)[1].split("\n\n")[0]


def test_the_engine_optimizes_the_strategys_param_groups(tiny_bert, sentiment_files, tmp_path, monkeypatch):
    def head_at_ten_times(self, model, lr):
        head = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("classifier")]
        return [{"params": head, "lr": lr * 10}]

    monkeypatch.setattr(get("head"), "param_groups", head_at_ten_times)
    out = train(parse_recipe(text_recipe(tiny_bert, sentiment_files, tmp_path / "run", {"name": "head"}, max_steps=1,
                                         lr_scheduler_type="constant")))
    groups = out["trainer"].optimizer.param_groups
    assert len(groups) == 1 and groups[0]["lr"] == pytest.approx(5e-2) and len(groups[0]["params"]) == 2
