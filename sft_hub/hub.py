"""Model cards (Hub metadata + how the model was trained and how to load it) for run directories."""

from __future__ import annotations

from pathlib import Path

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from sft_hub.errors import SftHubError

PIPELINE_TAGS = {
    "text_classification": "text-classification",
    "image_classification": "image-classification",
    "audio_classification": "audio-classification",
}


CARD_METRICS = ("accuracy", "f1", "f1_macro", "precision_macro", "recall_macro", "matthews_correlation", "pearson", "spearmanr", "mse")


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
                  "audio_classification": "AutoModelForAudioClassification"}[recipe.task]
    if manifest["saved_as"] == "adapter" and not merged and _from_scratch(manifest):
        return ("This adapter sits on a base trained from scratch that lives in the run directory (`base/`), not on the Hub: "
                "load it with `sft-hub predict RUN_DIR ...`, or publish a standalone model with `sft-hub push RUN_DIR --merged`.")
    if manifest["saved_as"] == "adapter" and not merged:
        base = manifest["base"]
        name = base["name_or_path"] or f"<the local base folder {base.get('local_folder')}>"
        revision = f", revision=\"{base['revision']}\"" if base.get("revision") else ""
        return (f"```python\nfrom peft import PeftModel\nfrom transformers import {task_class}\n\n"
                f"base = {task_class}.from_pretrained(\"{name}\"{revision}, num_labels={len(manifest['labels'] or [0])})\n"
                f"model = PeftModel.from_pretrained(base, \"<this repo or folder>\")\n```\n"
                "or, from the run directory: `sft-hub predict RUN_DIR ...` (checks the base's fingerprint first).")
    return f"```python\nfrom transformers import {task_class}\n\nmodel = {task_class}.from_pretrained(\"<this repo or folder>\")\n```"


def _origin(base: dict) -> str:
    if base.get("local_folder") and not base.get("name_or_path"):  # an upload whose base has no known Hub id
        return (f"Fine-tuned from a local model folder (`{base['local_folder']}`) with no known Hub id: loading this "
                "needs that same base (the sha256 of its weight files is in `manifest.json`); trained")
    revision = f" (revision `{base['revision']}`)" if base.get("revision") else ""
    return f"Fine-tuned from `{base['name_or_path']}`{revision}"


def render_card(recipe, manifest: dict, merged: bool = False) -> ModelCard:
    data = card_data(recipe, manifest, merged)
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


def check_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise SftHubError(f"--repo-id {repo_id!r}: not a Hub repo id; use OWNER/NAME (letters, digits, '-', '_', '.')") from None


def _ready_to_push() -> None:
    """Offline or not logged in: say so in one line before anything is assembled."""
    from huggingface_hub import constants, get_token

    if constants.HF_HUB_OFFLINE:
        raise SftHubError("push: offline (HF_HUB_OFFLINE is set); unset it to upload, or use --dry-run DIR to write the upload folder")
    if not get_token():
        raise SftHubError("push: not logged in to the Hugging Face Hub; log in with `hf auth login` (or set HF_TOKEN)")


def push(run_dir: Path, repo_id: str, private: bool = False, merged: bool = False, dry_run: Path | None = None) -> str:
    """Upload a run's adapter (or merged model) with its card; the token comes from `hf auth login` or HF_TOKEN."""
    import tempfile

    from huggingface_hub.errors import HfHubHTTPError

    from sft_hub.export import assemble_upload

    check_repo_id(repo_id)
    if dry_run is not None:
        assemble_upload(run_dir, dry_run, merged)
        return str(dry_run)
    _ready_to_push()
    from huggingface_hub import HfApi

    api = HfApi()  # reads the token from the environment or the login cache; it is never written anywhere
    with tempfile.TemporaryDirectory() as tmp:
        folder = assemble_upload(run_dir, Path(tmp) / "upload", merged)
        try:
            url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=f"sft-hub: upload {Path(run_dir).name}")
        except HfHubHTTPError as exc:
            status = getattr(exc.response, "status_code", None)
            hint = "; log in with `hf auth login` (a token with write access)" if status in (401, 403) else ""
            raise SftHubError(f"push to {repo_id}: the Hub said {str(exc).strip().splitlines()[0]}{hint}") from None
        except Exception as exc:  # no network, DNS, proxy (httpx errors are not OSErrors)
            raise SftHubError(f"push to {repo_id}: cannot reach the Hub ({str(exc).strip().splitlines()[0]})") from None
    return str(url)
