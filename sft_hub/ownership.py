"""What in a folder belongs to sft-hub: recognising a run dir, replacing it, and whose checkpoint is whose.

- `--overwrite` replaces a run dir only: a folder recognised by sft-hub's own files (recipe.yaml,
  manifest.json, labels.json or checkpoints/). It deletes the entries sft-hub writes and nothing else;
  a folder that holds anything sft-hub did not write is refused, naming the folder and the entries.
- Each complete checkpoint carries the resolved recipe and labels of its run (`sft-hub-run.json`), so
  `--resume CHECKPOINT` accepts only a checkpoint of the same run (keys in `runs.SAME_RUN_KEYS`,
  such as the number of epochs, may differ).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from sft_hub import runs
from sft_hub.errors import RunError
from sft_hub.lock import LOCK

MARKERS = (runs.RECIPE, runs.MANIFEST, runs.LABELS, "checkpoints")  # any one of these: an sft-hub run dir
OWN = {*MARKERS, runs.EVAL_RESULTS, runs.METRICS_LOG, runs.CHECK_INPUTS, "README.md", "base", "processor", LOCK,
       "report", "tensorboard", "thresholds.json"}  # plus each registered strategy's `saved_as` folder (see _own)
CHECKPOINT_RUN = "sft-hub-run.json"  # in every complete checkpoint: the recipe and labels it was trained with


def _own(name: str) -> bool:
    from sft_hub.strategies import available

    saved = {cls.saved_as for cls in available()}
    return name in OWN or name in saved or name.endswith(".tmp")  # .tmp: atomic writes interrupted by a crash


def is_run_dir(folder: Path) -> bool:
    return folder.is_dir() and any((folder / m).exists() for m in MARKERS)


def foreign_entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not _own(p.name)) if folder.is_dir() else []


def check_overwrite(folder: Path) -> None:
    """Raise unless `folder` is missing, empty, or an sft-hub run dir holding only sft-hub's files."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise RunError(f"training.output_dir: {folder} is a file, not a run directory; --overwrite refused")
    entries = [p for p in folder.iterdir() if p.name != LOCK]
    if not entries:
        return
    if not is_run_dir(folder):
        raise RunError(f"--overwrite: {folder} is not an sft-hub run dir (no {runs.RECIPE}, {runs.MANIFEST}, "
                       f"{runs.LABELS} or checkpoints/); refusing to delete it: choose another training.output_dir")
    foreign = foreign_entries(folder)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f", ... ({len(foreign)} in all)" if len(foreign) > 5 else "")
        raise RunError(f"--overwrite: {folder} holds files sft-hub did not write ({shown}); refusing to delete it: "
                       "move them out or choose another training.output_dir")


def clear_run_dir(folder: Path) -> None:
    """Delete what sft-hub wrote in a run dir (after `check_overwrite`); the lock file stays."""
    check_overwrite(folder)
    for p in folder.iterdir() if folder.is_dir() else []:
        if p.name == LOCK:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def write_checkpoint_run(checkpoint: Path, raw: dict, labels: Any) -> None:
    runs.write_json(checkpoint / CHECKPOINT_RUN, {"recipe": raw, "labels": labels})


def check_resume_checkpoint(checkpoint: Path, raw: dict, labels: Any) -> None:
    """`--resume CHECKPOINT`: the checkpoint must be complete and come from a run of this recipe and labels."""
    if not checkpoint.is_dir():
        raise RunError(f"--resume {checkpoint}: folder not found")
    if not (checkpoint / runs.COMPLETE).is_file():
        raise RunError(f"--resume {checkpoint}: not a complete checkpoint (no {runs.COMPLETE} marker)")
    carried = checkpoint / CHECKPOINT_RUN
    if not carried.is_file():
        raise RunError(f"--resume {checkpoint}: carries no {CHECKPOINT_RUN}, so its recipe cannot be checked "
                       "(not written by this sft-hub version); start without --resume")
    try:
        before = json.loads(carried.read_text())
        recipe, before_labels = before["recipe"], before["labels"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise RunError(f"--resume {checkpoint}: {CHECKPOINT_RUN} is corrupt") from None
    diff = runs.recipe_differences(recipe, raw)
    if diff:
        raise RunError(f"--resume {checkpoint}: trained with a different recipe (differs in {', '.join(diff[:5])}); "
                       f"only {', '.join(sorted(runs.SAME_RUN_KEYS))} may differ")
    if before_labels != labels:
        raise RunError(f"--resume {checkpoint}: trained with labels {before_labels}, the data now has {labels}")
