"""Model cards (Hub metadata + how the model was trained and how to load it) for run directories."""

from __future__ import annotations

from pathlib import Path

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

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
    return manifest["base"].get("resolved") in ("config", "base")


def card_data(recipe, manifest: dict, merged: bool = False) -> ModelCardData:
    base = manifest["base"]["name_or_path"] or ""
    adapter = manifest["saved_as"] == "adapter" and not merged
    dataset = _dataset_id(recipe)
    results = _eval_results(recipe, manifest)
    return ModelCardData(
        base_model=base if "/" in base and not Path(base).exists() and not base.startswith("embedded/") and not _from_scratch(manifest) else None,
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
        return (f"```python\nfrom peft import PeftModel\nfrom transformers import {task_class}\n\n"
                f"base = {task_class}.from_pretrained(\"{manifest['base']['name_or_path']}\", {size})\n"
                f"model = PeftModel.from_pretrained(base, \"<this repo or folder>\")\n```\n"
                "or, from the run directory: `sft-hub predict RUN_DIR ...` (checks the base's fingerprint first).")
    return f"```python\nfrom transformers import {task_class}\n\nmodel = {task_class}.from_pretrained(\"<this repo or folder>\")\n```"


def render_card(recipe, manifest: dict, merged: bool = False) -> ModelCard:
    data = card_data(recipe, manifest, merged)
    origin = (f"Trained from scratch (`{manifest['base']['name_or_path']}`, no pretrained weights)" if _from_scratch(manifest)
              else f"Fine-tuned from `{manifest['base']['name_or_path']}`")
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


def push(run_dir: Path, repo_id: str, private: bool = False, merged: bool = False, dry_run: Path | None = None) -> str:
    """Upload a run's adapter (or merged model) with its card; the token comes from `hf auth login` or HF_TOKEN."""
    import tempfile

    from sft_hub.export import assemble_upload

    if dry_run is not None:
        assemble_upload(run_dir, dry_run, merged)
        return str(dry_run)
    from huggingface_hub import HfApi

    api = HfApi()  # reads the token from the environment or the login cache; it is never written anywhere
    with tempfile.TemporaryDirectory() as tmp:
        folder = assemble_upload(run_dir, Path(tmp) / "upload", merged)
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=f"sft-hub: upload {Path(run_dir).name}")
    return str(url)
