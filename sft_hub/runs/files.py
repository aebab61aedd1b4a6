"""The run directory's files: what is written where, atomic writes, which checkpoints count, rotation, resume choice.

```
<run>/recipe.yaml        resolved recipe (re-running it reproduces the run)
<run>/manifest.json      base id/revision/fingerprints, strategy, labels, versions, seed, final metrics
<run>/adapter|head|model what the strategy learned (safetensors); <run>/base when the base had no files
<run>/processor/         tokenizer / feature extractor / image config used for inputs
<run>/check_inputs.safetensors  a few encoded eval inputs: export checks the merged model on them without the data
<run>/checkpoints/checkpoint-N/COMPLETE   a checkpoint counts only once this marker exists
<run>/eval_results.json, metrics.jsonl, README.md (model card)
```
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import yaml

from sft_hub.errors import RunError

RECIPE, MANIFEST, EVAL_RESULTS, METRICS_LOG = "recipe.yaml", "manifest.json", "eval_results.json", "metrics.jsonl"
CHECK_INPUTS = "check_inputs.safetensors"
LABELS = "labels.json"  # written at the start of a run: a resume with other labels is refused
COMPLETE = "COMPLETE"
_CKPT = re.compile(r"^checkpoint-(\d+)$")


def write_json(path: Path, data: Any) -> None:
    """Write atomically: a crash leaves the old file or the new one, never half of one."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=False, default=str)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(f"{path}: not found; is {path.parent} a finished sft-hub run?") from None
    except json.JSONDecodeError as exc:
        raise RunError(f"{path}: corrupt JSON ({exc.msg} at line {exc.lineno})") from None


def write_recipe(run_dir: Path, raw: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / (RECIPE + ".tmp")
    tmp.write_text(yaml.safe_dump(raw, sort_keys=False))
    os.replace(tmp, run_dir / RECIPE)


def checkpoints(run_dir: Path) -> list[tuple[int, Path, bool]]:
    """(step, path, complete) for every checkpoint folder, oldest first."""
    folder = run_dir / "checkpoints"
    found = []
    if folder.is_dir():
        for p in folder.iterdir():
            m = _CKPT.match(p.name)
            if m and p.is_dir():
                found.append((int(m.group(1)), p, (p / COMPLETE).is_file()))
    return sorted(found)


def latest_complete_checkpoint(run_dir: Path) -> Path | None:
    complete = [p for _, p, ok in checkpoints(run_dir) if ok]
    return complete[-1] if complete else None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def share_like_umask(folder: Path) -> None:
    """Give owner-only files in `folder` (or the file `folder`) the mode the user's umask gives new files.

    safetensors (0.8) writes its files owner-only (0600) where every other file gets 0644 under the usual
    umask, so teammates sharing a run dir on a cluster could read its config but not its weights.
    """
    mode = 0o666 & ~_umask()
    for f in folder.rglob("*") if folder.is_dir() else [folder]:
        if f.is_file() and not f.is_symlink() and f.stat().st_mode & 0o777 == 0o600 and mode != 0o600:
            f.chmod(mode)


def mark_complete(checkpoint: Path) -> None:
    """Called after every file of the checkpoint is written: fsync them, then write the marker last."""
    share_like_umask(checkpoint)
    for f in checkpoint.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    marker = checkpoint / COMPLETE
    with open(marker, "w") as fh:
        fh.write("complete\n")
        fh.flush()
        os.fsync(fh.fileno())


def rotate(run_dir: Path, keep: int | None, protect: Path | str | None = None) -> None:
    """Delete old checkpoints beyond `keep`, counting only complete ones.

    Never deleted: the newest complete checkpoint (what a resume needs) and `protect`, the best
    checkpoint so far (Trainer's `best_model_checkpoint`, which `load_best_model_at_end` loads at the end).
    """
    if not keep:
        return
    entries = checkpoints(run_dir)
    complete = [p for _, p, ok in entries if ok]
    newest = complete[-1] if complete else None
    best = Path(protect).name if protect else None
    for p in complete[:-keep]:
        if p != newest and p.name != best:
            shutil.rmtree(p, ignore_errors=True)
    for _, p, ok in entries:  # incomplete ones older than the newest complete one are debris of a crash
        if not ok and newest is not None and p.stat().st_mtime < newest.stat().st_mtime:
            shutil.rmtree(p, ignore_errors=True)


def check_output_dir(run_dir: Path, raw: dict, overwrite: bool) -> str:
    """Decide what to do with `run_dir`: "new", "overwrite" (an sft-hub run dir to replace), "resume" or raise.

    Nothing is deleted here (the engine clears an overwritten run dir only once the model is built), and
    `--overwrite` is refused for a folder that is not an sft-hub run dir (see `ownership.check_overwrite`).
    A folder holding a different run (another recipe) or a finished run is never mixed into silently.
    """
    from sft_hub.lock import LOCK
    from sft_hub.ownership import check_overwrite

    if overwrite:
        check_overwrite(run_dir)
        return "overwrite" if run_dir.exists() and any(p.name != LOCK for p in run_dir.iterdir()) else "new"
    if not run_dir.exists() or not any(p.name != LOCK for p in run_dir.iterdir()):
        return "new"
    recipe_file = run_dir / RECIPE
    if not recipe_file.is_file():
        raise RunError(f"training.output_dir: {run_dir} is not empty and holds no sft-hub run; choose another folder")
    previous = yaml.safe_load(recipe_file.read_text()) or {}
    diff = recipe_differences(previous, raw)
    if diff:
        raise RunError(f"training.output_dir: {run_dir} holds a different run (differs in {', '.join(diff[:5])}); pass --overwrite to replace it")
    if (run_dir / MANIFEST).is_file():
        raise RunError(f"training.output_dir: {run_dir} holds a finished run of this recipe; pass --overwrite to train again")
    return "resume"


# Running longer, logging differently or from another folder is the same run; everything else must match to resume.
SAME_RUN_KEYS = frozenset({"num_train_epochs", "max_steps", "logging_steps", "save_steps", "eval_steps", "save_total_limit",
                           "disable_tqdm", "output_dir"})


def _comparable(raw: dict) -> dict:
    training = {k: v for k, v in (raw.get("training") or {}).items() if k not in SAME_RUN_KEYS}
    return {**{k: v for k, v in raw.items() if k != "description"}, "training": training}


def recipe_differences(before: dict, now: dict) -> list[str]:
    """Dotted keys in which two resolved recipes differ as runs (SAME_RUN_KEYS ignored)."""
    return sorted(_diff_keys(_comparable(before), _comparable(now)))


def _diff_keys(a: dict, b: dict, prefix: str = "") -> set[str]:
    out = set()
    for key in set(a) | set(b):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out |= _diff_keys(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.add(f"{prefix}{key}")
    return out
