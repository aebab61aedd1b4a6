"""Model cards (Hub metadata + how the model was trained and how to load it) for run directories."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import ModelCard, ModelCardData

PIPELINE_TAGS = {
    "text_classification": "text-classification",
    "image_classification": "image-classification",
    "audio_classification": "audio-classification",
}


def _dataset_id(recipe) -> str | None:
    data = recipe.data
    if getattr(data, "glue", None):
        return "nyu-mll/glue"
    return getattr(data, "dataset", None)


def card_data(recipe, manifest: dict, merged: bool = False) -> ModelCardData:
    base = manifest["base"]["name_or_path"]
    adapter = manifest["saved_as"] == "adapter" and not merged
    metrics = [{"type": k.split("_", 2)[-1] if k.startswith("eval_") else k, "value": v}
               for split in manifest["metrics"].values() for k, v in split.items()
               if isinstance(v, (int, float)) and not k.endswith(("_runtime", "_per_second", "_num_examples", "_loss"))]
    dataset = _dataset_id(recipe)
    return ModelCardData(
        base_model=base if "/" in base and not Path(base).exists() else None,
        library_name="peft" if adapter else "transformers",
        pipeline_tag=PIPELINE_TAGS.get(recipe.task),
        license="apache-2.0",
        datasets=[dataset] if dataset else None,
        tags=["sft-hub", recipe.task, f"strategy:{manifest['strategy']['name']}"],
        metrics=sorted({m["type"] for m in metrics}) or None,
        model_name=Path(str(recipe.training["output_dir"])).name,
    )


def _how_to_load(recipe, manifest: dict, merged: bool) -> str:
    task_class = {"text_classification": "AutoModelForSequenceClassification",
                  "image_classification": "AutoModelForImageClassification",
                  "audio_classification": "AutoModelForAudioClassification"}[recipe.task]
    if manifest["saved_as"] == "adapter" and not merged:
        return (f"```python\nfrom peft import PeftModel\nfrom transformers import {task_class}\n\n"
                f"base = {task_class}.from_pretrained(\"{manifest['base']['name_or_path']}\", num_labels={len(manifest['labels'] or [0])})\n"
                f"model = PeftModel.from_pretrained(base, \"<this repo or folder>\")\n```\n"
                "or, from the run directory: `sft-hub predict RUN_DIR ...` (checks the base's fingerprint first).")
    return f"```python\nfrom transformers import {task_class}\n\nmodel = {task_class}.from_pretrained(\"<this repo or folder>\")\n```"


def render_card(recipe, manifest: dict, merged: bool = False) -> ModelCard:
    data = card_data(recipe, manifest, merged)
    metrics = "\n".join(f"| {split} | {k} | {v:.4f} |" for split, vals in manifest["metrics"].items()
                        for k, v in vals.items() if isinstance(v, float) and not k.endswith(("_runtime", "_per_second")))
    text = f"""---
{data.to_yaml()}
---

# {data.model_name}

Fine-tuned with sft-hub from `{manifest['base']['name_or_path']}` for {recipe.task.replace('_', ' ')}
with the **{manifest['strategy']['name']}** strategy ({manifest['parameters']['trainable']:,} of
{manifest['parameters']['total']:,} parameters trained). The base weights were fingerprinted before and
after training and left unchanged (sha256 of its weight files in `manifest.json`).

Labels: {', '.join(manifest['labels']) if manifest['labels'] else 'regression (one output)'}

## Results

| split | metric | value |
|---|---|---|
{metrics}

## How to load

{_how_to_load(recipe, manifest, merged)}

## Training recipe (resolved)

```yaml
{yaml.safe_dump(recipe.raw, sort_keys=False).strip()}
```

Library versions: {', '.join(f'{k} {v}' for k, v in manifest['versions'].items())}.
"""
    return ModelCard(text)


def write_model_card(run_dir: Path, recipe, manifest: dict, merged: bool = False) -> Path:
    path = Path(run_dir) / "README.md"
    path.write_text(str(render_card(recipe, manifest, merged)))
    return path


def summary(manifest: dict) -> dict[str, Any]:
    return {"task": manifest["task"], "base": manifest["base"]["name_or_path"], "strategy": manifest["strategy"]["name"],
            "main_metric": manifest["main_metric"]}
