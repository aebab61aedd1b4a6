"""Model cards (Hub metadata + how the model was trained and how to load it) for run directories and upload folders."""

from __future__ import annotations

from pathlib import Path

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from sft_hub.base_model import BaseRef
from sft_hub.report.card import card_section

PIPELINE_TAGS = {
    "text_classification": "text-classification",
    "image_classification": "image-classification",
    "audio_classification": "audio-classification",
    "speech_recognition": "automatic-speech-recognition",
}


CARD_METRICS = ("accuracy", "f1", "f1_macro", "precision_macro", "recall_macro", "matthews_correlation", "pearson", "spearmanr", "mse", "wer", "cer")


def _dataset_id(recipe) -> str | None:
    data = recipe.data
    if getattr(data, "glue", None):
        return "nyu-mll/glue"
    return getattr(data, "dataset", None)


def _eval_results(recipe, manifest: dict) -> list[EvalResult]:
    dataset = _dataset_id(recipe) or "custom"
    config = getattr(recipe.data, "glue", None) or getattr(recipe.data, "dataset_config", None)
    out = []
    for split, values in manifest["metrics"].items():
        for key, value in values.items():
            name = key.removeprefix(f"eval_{split}_")
            if isinstance(value, (int, float)) and name in CARD_METRICS:
                out.append(EvalResult(task_type=PIPELINE_TAGS[recipe.task], dataset_type=dataset, dataset_name=dataset,
                                      dataset_config=config, dataset_split=split, metric_type=name, metric_value=float(value)))
    return out


def _from_scratch(manifest: dict) -> bool:
    return BaseRef.from_manifest(manifest["base"]).from_scratch


def card_data(recipe, manifest: dict, merged: bool = False) -> ModelCardData:
    base = BaseRef.from_manifest(manifest["base"])
    adapter = manifest["saved_as"] == "adapter" and not merged
    dataset = _dataset_id(recipe)
    results = _eval_results(recipe, manifest)
    return ModelCardData(
        base_model=base.hub_id,  # a Hub id (an embedded package's too); None for local and from-scratch bases
        library_name="peft" if adapter else "transformers",
        pipeline_tag=PIPELINE_TAGS.get(recipe.task),
        license="apache-2.0",
        datasets=[dataset] if dataset else None,
        tags=["sft-hub", recipe.task, f"strategy-{manifest['strategy']['name']}"],
        metrics=sorted({r.metric_type for r in results}) or None,
        model_name=Path(str(recipe.training["output_dir"])).name,
        eval_results=results or None,
    )


def _how_to_load(recipe, manifest: dict, merged: bool) -> str:
    task_class = {"text_classification": "AutoModelForSequenceClassification",
                  "image_classification": "AutoModelForImageClassification",
                  "audio_classification": "AutoModelForAudioClassification",
                  "speech_recognition": "AutoModelForCTC"}[recipe.task]
    size = f"vocab_size={len(manifest['labels'] or [0])}, pad_token_id=0" if recipe.task == "speech_recognition" else \
        f"num_labels={len(manifest['labels'] or [0])}"
    if manifest["saved_as"] == "adapter" and not merged and _from_scratch(manifest):
        return ("This adapter sits on a base trained from scratch that lives in the run directory (`base/`), not on the Hub: "
                "load it with `sft-hub predict RUN_DIR ...`, or publish a standalone model with `sft-hub push RUN_DIR --merged`.")
    if manifest["saved_as"] == "adapter" and not merged:
        base = manifest["base"]
        name = BaseRef.from_manifest(base).hub_id or base["name_or_path"] or f"<the local base folder {base.get('local_folder')}>"
        revision = f", revision=\"{base['revision']}\"" if base.get("revision") else ""
        return (f"```python\nfrom peft import PeftModel\nfrom transformers import {task_class}\n\n"
                f"base = {task_class}.from_pretrained(\"{name}\"{revision}, {size})\n"
                f"model = PeftModel.from_pretrained(base, \"<this repo or folder>\")\n```\n"
                "or, from the run directory: `sft-hub predict RUN_DIR ...` (checks the base's fingerprint first).")
    return f"```python\nfrom transformers import {task_class}\n\nmodel = {task_class}.from_pretrained(\"<this repo or folder>\")\n```"


def _origin(base: dict) -> str:
    if base.get("local_folder") and not base.get("name_or_path"):  # an upload whose base has no known Hub id
        return (f"Fine-tuned from a local model folder (`{base['local_folder']}`) with no known Hub id: loading this "
                "needs that same base (the sha256 of its weight files is in `manifest.json`); trained")
    revision = f" (revision `{base['revision']}`)" if base.get("revision") else ""
    return f"Fine-tuned from `{base['name_or_path']}`{revision}"


def render_card(recipe, manifest: dict, merged: bool = False, report_dir: Path | None = None) -> ModelCard:
    """The card; with `report_dir` (the `report/` folder beside README.md) it embeds the figures and per-class table."""
    data = card_data(recipe, manifest, merged)
    report = card_section(report_dir) if report_dir is not None else ""
    origin = (f"Trained from scratch (`{manifest['base']['name_or_path']}`, no pretrained weights)" if _from_scratch(manifest)
              else _origin(manifest["base"]))
    fingerprint = ("The base weights were fingerprinted before and\nafter training and left unchanged (sha256 of its weight files in `manifest.json`)."
                   if manifest["base"].get("files_sha256") else "")
    metrics = "\n".join(f"| {split} | {k} | {v:.4f} |" for split, vals in manifest["metrics"].items()
                        for k, v in vals.items() if isinstance(v, float) and not k.endswith(("_runtime", "_per_second")))
    text = f"""---
{data.to_yaml()}
---

# {data.model_name}

{origin} with sft-hub for {recipe.task.replace('_', ' ')}
with the **{manifest['strategy']['name']}** strategy ({manifest['parameters']['trainable']:,} of
{manifest['parameters']['total']:,} parameters trained). {fingerprint}

Labels: {', '.join(manifest['labels']) if manifest['labels'] else 'regression (one output)'}

## Results

| split | metric | value |
|---|---|---|
{metrics}

{report}
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
    path.write_text(str(render_card(recipe, manifest, merged, report_dir=Path(run_dir) / "report")))
    return path
