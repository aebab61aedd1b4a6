"""Adapters that never rot: merge to a standalone model, several adapters on one base, push dry-run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import text_recipe, write_sentiment_csv
from datasets import Dataset

from sft_hub.config import parse_recipe
from sft_hub.engine import train
from sft_hub.errors import RunError
from sft_hub.export import export_merged
from sft_hub.hub import push
from sft_hub.inference import load_adapters, load_run, logits

ROWS = Dataset.from_dict({"text_a": ["the movie was great", "a dreadful plot", "it is fine", "so bad it's awful"]})


@pytest.fixture(scope="module")
def two_runs(tiny_bert, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("adapters")
    files = write_sentiment_csv(tmp)
    out = []
    for name, lr in (("a", 5e-3), ("b", 2e-2)):
        train(parse_recipe(text_recipe(tiny_bert, files, tmp / name, learning_rate=lr, max_steps=4)))
        out.append(tmp / name)
    return out


def test_export_merge_gives_a_standalone_model(two_runs, tmp_path):
    from transformers import AutoModelForSequenceClassification

    result = export_merged(two_runs[0], tmp_path / "merged")
    assert result["max_abs_diff"] <= 1e-5
    files = {p.name for p in (tmp_path / "merged").iterdir()}
    assert "model.safetensors" in files and "config.json" in files and not any(f.endswith((".bin", ".pt")) for f in files)
    standalone = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()  # the HF class alone
    loaded = load_run(two_runs[0])
    from sft_hub.inference import LoadedRun

    np.testing.assert_allclose(logits(LoadedRun(loaded.info, loaded.task, standalone, loaded.processor), ROWS), logits(loaded, ROWS), atol=1e-5)


def test_several_adapters_share_one_base(two_runs):
    views = load_adapters(two_runs)
    model = views[0].model
    assert all(v.model is model for v in views) and set(model.peft_config) == {v.adapter_name for v in views}
    for view, run in zip(views, two_runs):
        np.testing.assert_allclose(logits(view, ROWS), logits(load_run(run), ROWS), atol=1e-6)
    base_params = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n and "modules_to_save" not in n)
    adapter_params = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n or "modules_to_save" in n)
    assert adapter_params < 0.2 * base_params  # memory grows by adapters, not by bases


def test_adapter_on_another_base_is_refused(two_runs, tmp_path, tiny_bert):
    from conftest import write_tiny_bert

    other = write_tiny_bert(tmp_path / "other-bert", seed=3)
    files = write_sentiment_csv(tmp_path)
    train(parse_recipe(text_recipe(other, files, tmp_path / "c", max_steps=1)))
    with pytest.raises(RunError, match="trained on base .*other-bert"):
        load_adapters([two_runs[0], tmp_path / "c"])


@pytest.mark.parametrize("merged", [False, True])
def test_push_dry_run_folder_loads_and_has_a_hub_card(two_runs, tmp_path, merged):
    from huggingface_hub import ModelCard
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    folder = tmp_path / "upload"
    push(two_runs[0], "someone/tiny-sentiment", merged=merged, dry_run=folder)
    card = ModelCard.load(folder / "README.md")
    meta = card.data.to_dict()
    assert meta["library_name"] == ("transformers" if merged else "peft") and meta["pipeline_tag"] == "text-classification"
    assert meta["license"] == "apache-2.0" and "accuracy" in meta["metrics"]
    results = card.data.eval_results
    assert any(r.metric_type == "accuracy" and 0 <= r.metric_value <= 1 for r in results)
    assert "learning_rate" in card.text and "How to load" in card.text
    loaded = load_run(two_runs[0])
    if merged:
        model = AutoModelForSequenceClassification.from_pretrained(folder)
    else:
        from sft_hub.tasks.text import build_model

        base = build_model(loaded.info.recipe.model, loaded.labels).model
        model = PeftModel.from_pretrained(base, folder)
    from sft_hub.inference import LoadedRun

    got = logits(LoadedRun(loaded.info, loaded.task, model.eval(), loaded.processor), ROWS)
    np.testing.assert_allclose(got, logits(loaded, ROWS), atol=1e-5)
    assert not [p for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    assert json.loads((folder / "manifest.json").read_text())["saved_as"] == "adapter"
