"""`Run`: one run directory as an object.

The engine writes a run through it (`Run.create(recipe)`); eval, predict, export and push open a finished
one (`Run.open(dir)`) and read its manifest, recipe, strategy and base (`BaseRef`) from it. Loading never
re-validates the recipe's data section: a run dir moved to another folder or machine predicts and exports
without its training data (export checks the merged model on the inputs the run saved, `check_inputs`).
Only `eval`, which needs the data, validates it (`data_config`).
"""

from __future__ import annotations

import dataclasses
import logging
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from sft_hub.base_model import BaseRef, files_sha256
from sft_hub.config import Recipe, parse_recipe, read_yaml
from sft_hub.errors import RunError
from sft_hub.manifest import FORMAT as MANIFEST_FORMAT  # noqa: F401  (re-exported)
from sft_hub.runs import files
from sft_hub.schema import from_dict
from sft_hub.strategies import Strategy, parse_strategy, saves_whole_model
from sft_hub.tasks import get_task

log = logging.getLogger("sft_hub")


def verify_base(weight_files: list[Path], manifest: dict, allow_mismatch: bool = False) -> None:
    """The base's weight files must hash as they did when the run was trained."""
    expected = manifest["base"].get("files_sha256") or {}
    if not expected:
        return
    found = files_sha256(weight_files)
    if found != expected:
        name = manifest["base"]["name_or_path"]
        detail = ", ".join(f"{f}: expected {expected.get(f, 'absent')[:12]}, found {found.get(f, 'absent')[:12]}"
                           for f in sorted(set(expected) | set(found)) if expected.get(f) != found.get(f))
        if not allow_mismatch:
            raise RunError(f"base model {name}: its weights differ from the base this run was trained on ({detail}); "
                           "pass --allow-base-mismatch to load anyway")
        log.warning("loading onto a different base than the run was trained on (%s): --allow-base-mismatch given", detail)


class Run:
    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)

    def __repr__(self) -> str:
        return f"Run({str(self.run_dir)!r})"

    # --- opening a finished run ------------------------------------------------------------------------

    @classmethod
    def open(cls, run_dir: str | Path) -> Run:
        """A finished run (its manifest exists and parses); RunError otherwise."""
        run = cls(run_dir)
        if not run.run_dir.is_dir():
            raise RunError(f"run directory {run_dir} not found")
        run.manifest  # noqa: B018  (read now: a missing or corrupt manifest is the caller's error, here)
        return run

    @cached_property
    def manifest(self) -> dict[str, Any]:
        return files.read_json(self.run_dir / files.MANIFEST)

    @cached_property
    def recipe(self) -> Recipe:
        """The stored recipe, type-checked; its sections' own checks (files exist, ...) are not re-run."""
        path = self.run_dir / files.RECIPE
        if not path.is_file():
            raise RunError(f"{path}: not found; is {self.run_dir} a finished sft-hub run?")
        return parse_recipe(read_yaml(path), validate=False)

    @property
    def task(self) -> Any:
        return get_task(self.manifest["task"])

    @cached_property
    def strategy(self) -> Strategy:
        return parse_strategy(self.manifest["strategy"])

    @cached_property
    def base(self) -> BaseRef:
        return BaseRef.from_manifest(self.manifest["base"])

    @property
    def labels(self) -> list[str] | None:
        return self.manifest["labels"]

    def data_config(self) -> Any:
        """The data section, validated now (eval reads the data itself; its paths were made absolute at train time)."""
        return from_dict(self.task.DataConfig, self.recipe.raw["data"], "data")

    def load_processor(self) -> Any:
        return self.task.load_processor(self.recipe.model, saved=self.run_dir / "processor")

    def build_base(self, allow_base_mismatch: bool = False) -> torch.nn.Module:
        """The base this run was trained on (from its BaseRef; fingerprint checked), without what was learned."""
        model_cfg = self.recipe.model
        source = self.base.source(self.run_dir)
        if source != model_cfg.name_or_path:
            model_cfg = dataclasses.replace(model_cfg, name_or_path=source, revision=None if self.base.kind == "run" else model_cfg.revision)
        built = self.task.build_model(model_cfg, self.labels)
        verify_base(built.weight_files, self.manifest, allow_base_mismatch)
        return built.model

    def load_model(self, allow_base_mismatch: bool = False) -> torch.nn.Module:
        """The trained model in eval mode: the base with what the strategy learned put back on it."""
        if saves_whole_model(self.strategy):  # the saved model is complete: built from the run, no base needed
            model_cfg = dataclasses.replace(self.recipe.model, name_or_path=str(self.run_dir / self.strategy.saved_as), revision=None)
            model = self.task.build_model(model_cfg, self.labels).model
        else:
            model = self.build_base(allow_base_mismatch)
        return self.strategy.load(model, self.run_dir).eval()

    def check_inputs(self) -> dict[str, torch.Tensor] | None:
        """The encoded inputs saved at train time (None for runs written before they were)."""
        path = self.run_dir / files.CHECK_INPUTS
        return load_file(str(path)) if path.is_file() else None

    # --- writing a run (the engine) --------------------------------------------------------------------

    @classmethod
    def create(cls, recipe: Recipe) -> Run:
        """The run a recipe trains into (`training.output_dir`); `prepare` decides new / resume."""
        return cls(recipe.output_dir)

    def prepare(self, raw: dict, overwrite: bool) -> str:
        """"new" or "resume" for this recipe (RunError for a folder holding another or a finished run)."""
        return files.check_output_dir(self.run_dir, raw, overwrite)

    def write_recipe(self, raw: dict) -> None:
        files.write_recipe(self.run_dir, raw)

    def write_json(self, name: str, data: Any) -> None:
        files.write_json(self.run_dir / name, data)

    def read_json(self, name: str) -> Any:
        return files.read_json(self.run_dir / name)

    def checkpoints(self) -> list[tuple[int, Path, bool]]:
        return files.checkpoints(self.run_dir)

    def latest_complete_checkpoint(self) -> Path | None:
        return files.latest_complete_checkpoint(self.run_dir)

    def save_check_inputs(self, batch: dict[str, torch.Tensor]) -> None:
        tensors = {k: v.detach().cpu().contiguous() for k, v in batch.items() if isinstance(v, torch.Tensor)}
        save_file(tensors, str(self.run_dir / files.CHECK_INPUTS))
        files.share_like_umask(self.run_dir / files.CHECK_INPUTS)

    def share(self, name: str) -> None:
        files.share_like_umask(self.run_dir / name)

    def finish(self, manifest: dict[str, Any]) -> None:
        """Write the manifest, last: its presence means "finished"."""
        self.write_json(files.MANIFEST, manifest)
        self.__dict__["manifest"] = manifest
