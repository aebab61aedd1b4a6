"""Security: no unsafe unpickling, no remote code unless asked, no Hub token ever written to disk."""

from __future__ import annotations

import signal

import pytest
import torch
import yaml
from conftest import REPO, text_recipe, write_sentiment_csv
from faults import run_cli

from sft_hub import runs


class Boom:
    """Unpickling this (without weights_only) would create the canary file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_planted_pickles_in_a_checkpoint_are_never_executed(tiny_bert, tmp_path):
    out = tmp_path / "run"
    raw = text_recipe(tiny_bert, write_sentiment_csv(tmp_path), out, max_steps=6, save_strategy="steps", save_steps=2)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    assert run_cli("kill_after_complete:2", "train", str(recipe)).returncode == -signal.SIGKILL
    ckpt = runs.latest_complete_checkpoint(out)
    canary = tmp_path / "CANARY"
    for name in ("rng_state.pth", "optimizer.pt", "scheduler.pt", "training_args.bin"):
        torch.save({"state": Boom(canary)}, ckpt / name)
    proc = run_cli("none", "train", str(recipe))
    assert not canary.exists(), "a planted pickle was executed"
    assert proc.returncode != 0 or "resuming from" in proc.stderr


def test_library_code_never_unpickles_unsafely():
    for path in (REPO / "sft_hub").rglob("*.py"):
        text = path.read_text()
        assert "pickle.load" not in text, path
        for call in text.split("torch.load(")[1:]:
            assert "weights_only=True" in call.split(")")[0], path


def test_remote_code_is_not_run_unless_the_recipe_asks(tmp_path):
    from sft_hub.config import from_dict
    from sft_hub.errors import ConfigError
    from sft_hub.tasks import text

    canary = tmp_path / "CANARY"
    model = tmp_path / "custom-model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "evil", "auto_map": {"AutoConfig": "conf.EvilConfig", '
                                       '"AutoModelForSequenceClassification": "modeling.EvilModel"}}')
    (model / "conf.py").write_text(f"open({str(canary)!r}, 'w').close()\nfrom transformers import PretrainedConfig\n"
                                   "class EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n")
    cfg = from_dict(text.ModelConfig, {"name_or_path": str(model)}, "model")
    assert cfg.trust_remote_code is False
    with pytest.raises(ConfigError, match="model.name_or_path: cannot load"):
        text.build_model(cfg, ["a", "b"])
    assert not canary.exists()


def test_hub_token_never_reaches_the_disk(tiny_bert, tmp_path):
    token = "hf_CANARYtoken1234567890abcdefXYZ"
    env = {"HF_TOKEN": token, "HUGGING_FACE_HUB_TOKEN": token}
    out = tmp_path / "run"
    raw = text_recipe(tiny_bert, write_sentiment_csv(tmp_path), out, max_steps=2, save_strategy="steps", save_steps=1)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    logs = [run_cli("none", "train", str(recipe), env=env), run_cli("none", "push", str(out), "--repo-id", "me/x", "--dry-run", str(tmp_path / "up"), env=env)]
    assert all(p.returncode == 0 for p in logs), logs[-1].stderr[-2000:]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "training_args.bin" for p in files) and (tmp_path / "up" / "README.md").exists()
    for p in files:
        assert token.encode() not in p.read_bytes(), p
    for proc in logs:
        assert token not in proc.stdout + proc.stderr
