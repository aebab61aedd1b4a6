"""Exporting a run: a merged standalone model folder, or the exact folder `sft-hub push` uploads.

`export_merged` folds an adapter (or a head) into its base and writes an HF model folder (safetensors)
that loads with the task's `AutoModelFor...` class alone, then checks its predictions against the run's
model on the inputs the run saved at train time (`check_inputs`), so no training data is needed.
`assemble_upload` writes the upload folder: adapter or merged model, processor files, model card and
manifest; never a token, never a pickle.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
from pathlib import Path

import numpy as np
import torch
import yaml
from peft import PeftModel
from peft.utils import ModulesToSaveWrapper

from sft_hub import public, runs
from sft_hub.card import write_model_card
from sft_hub.errors import RunError, SftHubError
from sft_hub.inference import LoadedRun, batch_logits, encode_batch, load_run
from sft_hub.lock import RunLock
from sft_hub.report.card import copy_for_upload
from sft_hub.runs import Run

log = logging.getLogger("sft_hub")
UPLOAD_SKIP = {"training_args.bin", "README.md"}
LOADS_ON_ITS_OWN = {"adapter", "model"}  # saved folders peft / transformers load alone; others (head) are merged to upload
CHECK_ROWS = 16


def check_inputs(loaded: LoadedRun) -> tuple[dict[str, torch.Tensor] | None, str | None]:
    """(inputs, note): the run's saved check inputs; for runs written before those, rows of its data if present."""
    saved = loaded.info.check_inputs()
    if saved is not None:
        return saved, None
    recipe = loaded.info.recipe
    try:
        data = loaded.task.load_data(loaded.info.data_config(), int(recipe.training.get("seed", 42)))
    except (SftHubError, OSError) as exc:
        return None, f"check skipped: the run saved no check inputs and its data is unavailable ({exc})"
    split = data.splits[data.eval_splits[0]] if data.eval_splits else data.splits[data.train_split]
    rows = split.select(range(min(CHECK_ROWS, len(split))))
    return encode_batch(loaded.task, loaded.processor, recipe.data, recipe.model, rows), None


def merged_model(loaded: LoadedRun) -> torch.nn.Module:
    return merge(loaded.model)


def merge(model: torch.nn.Module) -> torch.nn.Module:
    """The model with a peft adapter folded in (any other model as it is)."""
    if not isinstance(model, PeftModel):
        return model
    # The head (peft `modules_to_save`) first: outside LoRA, peft 0.21 unwraps it by copying `.weight`, which a
    # head made of several layers (AST's layernorm + dense) lacks.
    for name, module in list(model.named_modules()):
        if isinstance(module, ModulesToSaveWrapper):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.modules_to_save[module.active_adapters[0]])
    return model.merge_and_unload()


def export_merged(run_dir: str | Path, out: str | Path, allow_base_mismatch: bool = False, check: bool = True,
                  lock: bool = True) -> dict:
    """Write a standalone merged model to `out`; returns {"out", "max_abs_diff", "note"} (diff of logits vs the run).

    Holds the run dir's lock (`lock.RunLock`) while it reads the run and writes `out` (which may lie inside
    the run dir): no train --overwrite can replace the run underneath it, and no two exports write one run.
    """
    with RunLock(run_dir, "export --merge") if lock and Path(run_dir).is_dir() else contextlib.nullcontext():
        return _export_merged(run_dir, out, allow_base_mismatch, check)


def _export_merged(run_dir: str | Path, out: str | Path, allow_base_mismatch: bool, check: bool) -> dict:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out}: is a file; give a new folder")
    if out.exists() and any(out.iterdir()):
        raise RunError(f"--out {out}: folder is not empty; choose a new folder")
    loaded = load_run(run_dir, allow_base_mismatch=allow_base_mismatch)
    strategy = loaded.info.strategy
    if not strategy.merges:
        raise RunError(f"{run_dir}: strategy {strategy.name} learns weights that do not merge into the base; "
                       f"load the run itself (sft-hub predict) or push its {strategy.saved_as}")
    inputs, note = check_inputs(loaded) if check else (None, "check skipped")
    before = batch_logits(loaded.model, inputs) if inputs is not None else None
    model = merged_model(loaded)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    runs.share_like_umask(out)
    loaded.task.save_processor(loaded.processor, out)
    diff = None
    if inputs is not None:
        cfg = dataclasses.replace(loaded.info.recipe.model, name_or_path=str(out), revision=None)
        standalone = loaded.task.build_model(cfg, loaded.labels).model.eval()
        after = batch_logits(standalone, inputs)
        diff = float(np.max(np.abs(after - before))) if len(before) else 0.0
        if diff > 1e-4:
            raise RunError(f"merged model in {out} predicts differently from the run (max |logit diff| {diff:.2e})")
    elif note:
        log.warning("%s", note)
    return {"out": out, "max_abs_diff": diff, "note": note}


def assemble_upload(run_dir: str | Path, folder: str | Path, merged: bool = False) -> Path:
    """The exact folder `push` uploads (also what `push --dry-run DIR` writes)."""
    run_dir, folder = Path(run_dir), Path(folder)
    run = Run.open(run_dir)
    if folder.exists() and any(folder.iterdir()):
        raise RunError(f"{folder}: folder is not empty; choose a new folder")
    saved_as = run.strategy.saved_as
    if merged or saved_as not in LOADS_ON_ITS_OWN:
        export_merged(run_dir, folder, lock=False)  # writes the upload folder, not the run dir
    else:
        folder.mkdir(parents=True, exist_ok=True)
        for f in (run_dir / saved_as).iterdir():
            if f.is_file() and f.name not in UPLOAD_SKIP:
                shutil.copy2(f, folder / f.name)
        for f in (run_dir / "processor").iterdir():
            if f.is_file():
                shutil.copy2(f, folder / f.name)
    copy_for_upload(run_dir, folder)  # the report figures and table the card embeds
    _write_public_files(run_dir, folder, run, merged=merged or saved_as != "adapter")
    pickles = [f.name for f in folder.iterdir() if f.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt")]
    if pickles:
        raise RunError(f"refusing to upload pickle files: {', '.join(pickles)}")
    return folder


def _write_public_files(run_dir: Path, folder: Path, info, merged: bool) -> None:
    """manifest, recipe, results and card as others see them: base by Hub id, no local paths (see public.py)."""
    ref = public.base_ref(info.manifest)
    public.warn_if_unnamed(ref, run_dir)
    manifest = public.public_manifest(info.manifest, ref)
    raw = public.public_recipe(info.recipe.raw, ref)
    public.fix_adapter_config(folder, ref)
    runs.write_json(folder / "manifest.json", manifest)
    (folder / "recipe.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    shutil.copy2(run_dir / "eval_results.json", folder / "eval_results.json")
    write_model_card(folder, dataclasses.replace(info.recipe, raw=raw), manifest, merged=merged)
    public.check_no_local_paths(folder, run_dir, info.manifest)
