"""Every bundled recipe parses and validates with the real loader, and its header says how to run it."""

from __future__ import annotations

import pytest
from conftest import REPO

from sft_hub.config import load_recipe

RECIPES = sorted((REPO / "recipes").rglob("*.yaml"))


def test_recipes_exist_for_every_glue_task():
    names = {p.name for p in RECIPES}
    for task in ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"):
        assert f"{task}_bert_lora.yaml" in names
    assert {"sst2_bert_full.yaml", "sst2_minilm_lora.yaml", "sentiment_minilm_lora.yaml"} <= names
    for task in ("mrpc", "stsb", "rte", "wnli"):  # the small pair tasks: full fine-tuning generalises most reliably
        assert f"{task}_bert_full.yaml" in names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(REPO / "recipes")))
def test_recipe_loads_and_documents_itself(path):
    recipe = load_recipe(path)
    assert recipe.task == path.parent.name
    assert recipe.description, "a one-line description for `sft-hub recipes`"
    header = path.read_text().split("\ndescription:")[0]
    assert "sft-hub train" in header and "accelerate launch" in header
    assert recipe.output_dir.parts[0] == "runs"
