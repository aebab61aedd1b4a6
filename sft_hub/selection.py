"""`sft-hub select`: choose the backbone and the strategy for one recipe by measurement, cheaply.

1. Cheap stage: every backbone (`--models`) is scored with the cheap strategy (`--cheap`; default
   `linear_probe` when registered, else `head`) on at most `--sample` training rows, under `--cheap-budget`.
2. Fine-tune stage: the `--finetune-top` K best backbones are trained with each `--strategies` entry on the
   recipe's training data under `--budget` (steps via `training.max_steps`, time via a callback).

Every candidate is an ordinary run dir (`<out>/cheap/<model>__<strategy>`, `<out>/finetune/...`) trained by
`engine.train`; a finished candidate with the same recipe is reused, so an interrupted select resumes.
Ranking honesty: candidates are ranked on a split carved from train (`data.validation_fraction`, the recipe's
seed); the recipe's own eval splits are evaluated and reported beside it, never used to choose. When the recipe
already carves its eval split from train, that split ranks. Under `accelerate launch` every rank runs the
candidates one after another; only rank 0 prints and writes the leaderboard.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sft_hub import strategies
from sft_hub.compare import metric_value, run_row
from sft_hub.config import apply_overrides, parse_recipe, read_yaml
from sft_hub.errors import ConfigError, SftHubError
from sft_hub.runs import MANIFEST, RECIPE, Run, check_output_dir
from sft_hub.selection_spec import Budget, label, slug
from sft_hub.tasks import get_task

log = logging.getLogger("sft_hub")
LOWER_IS_BETTER = ("loss", "mse", "rmse", "mae")
DEFAULT_VAL_FRACTION = 0.1


def default_cheap() -> str:
    """`linear_probe` (one pass of the frozen base plus a scikit-learn fit) when registered, else `head`."""
    return "linear_probe" if "linear_probe" in {c.name for c in strategies.available()} else "head"


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


@dataclass
class SelectPlan:
    recipe: str
    overrides: list[str]
    models: list[str]
    strategies: list[tuple[str, Any]]  # (spec as written, Strategy)
    cheap: Any  # Strategy
    output: Path
    sample: int | None = 2000
    top_k: int = 2
    budget: Budget = dataclasses.field(default_factory=lambda: Budget("steps", 200))
    cheap_budget: Budget = dataclasses.field(default_factory=lambda: Budget("epochs", 1))
    val_fraction: float | None = None  # default: the recipe's, else 0.1
    val_max: int | None = None  # cap the carved split at this many rows (a smaller fraction)
    overwrite: bool = False
    learning_rates: dict[str, float] = dataclasses.field(default_factory=dict)  # strategy name or spec -> lr


@dataclass
class Ranking:
    split: str  # the split candidates are ranked on
    carved: bool  # carved from train by select (else: the recipe's own carve)
    fraction: float | None
    seed: int
    rows: int  # rows of the ranking split
    reported: list[str]  # the recipe's own eval splits, reported beside the ranking split


class Selector:
    """Builds and runs the candidates of one `SelectPlan`."""

    def __init__(self, plan: SelectPlan):
        self.plan = plan
        self.raw = apply_overrides(read_yaml(plan.recipe), plan.overrides)
        self.base = parse_recipe(copy.deepcopy(self.raw))  # a bad recipe fails here, before any model loads
        self.task = get_task(self.base.task)
        if plan.top_k < 0 or plan.sample is not None and plan.sample < 1:
            raise ConfigError("--finetune-top: must be >= 0; --sample: must be >= 1")
        if plan.val_max is not None and plan.val_max < 1:
            raise ConfigError(f"--val-max: must be >= 1, got {plan.val_max}")
        if plan.output.exists() and any(plan.output.iterdir()) and not (plan.output / "cheap").is_dir():
            raise ConfigError(f"--output: {plan.output} is not empty and holds no select run; choose another folder")
        self.candidate_raws = {m: self._model_raw(m) for m in plan.models}
        self.ranking = self._ranking()

    # --- validation, before anything trains ----------------------------------------------------------

    def _model_raw(self, model: str) -> dict:
        raw = copy.deepcopy(self.raw)
        raw["model"] = {**(raw.get("model") or {}), "name_or_path": model}
        try:
            recipe = parse_recipe(copy.deepcopy(raw))
            self.task.load_processor(recipe.model)  # an unknown Hub id / folder / architecture fails now
        except SftHubError as exc:
            raise ConfigError(f"--models: {model!r}: {exc}") from None
        except Exception as exc:  # from_pretrained's OSError / ValueError for a model it cannot find
            raise ConfigError(f"--models: {model!r}: cannot load: {str(exc).strip().splitlines()[0]}") from None
        return raw

    def _ranking(self) -> Ranking:
        cfg, load = self.base.data, self.task.load_data
        seed = int(self.base.training.get("seed", 42))
        own = cfg.validation_fraction is not None and self.plan.val_fraction is None
        if own:  # the recipe already evaluates on a split carved from train: that split ranks
            fraction, reported = cfg.validation_fraction, load(cfg, seed).eval_splits
        else:
            full = load(dataclasses.replace(cfg, validation_fraction=None, max_train_samples=None), seed)
            fraction = self.plan.val_fraction or DEFAULT_VAL_FRACTION
            if self.plan.val_max:
                fraction = min(fraction, self.plan.val_max / len(full.splits[full.train_split]))
            reported = full.eval_splits
        # the carved split's name and size exactly as the task makes them ("validation", or "holdout" beside one)
        carved = load(dataclasses.replace(cfg, validation_fraction=fraction, eval_splits=None), seed)
        held = carved.eval_splits[0]
        return Ranking(held, not own, fraction, seed, len(carved.splits[held]), [s for s in reported if s != held])

    # --- candidates ----------------------------------------------------------------------------------

    def candidate_raw(self, model: str, strategy: Any, stage: str, budget: Budget) -> dict:
        raw = copy.deepcopy(self.candidate_raws[model])
        raw["strategy"] = strategy.to_dict()
        data = raw["data"]
        data["validation_fraction"] = self.ranking.fraction
        data["eval_splits"] = [self.ranking.split, *self.ranking.reported]
        if stage == "cheap" and self.plan.sample:
            data["max_train_samples"] = min(self.plan.sample, data.get("max_train_samples") or self.plan.sample)
        # the per-run report (curves, confusion matrix, mistakes) is a second pass over the eval splits: skipped for
        # candidates to keep select cheap; `sft-hub report <run>` writes it for the ones worth a look
        raw["engine"] = {**(raw.get("engine") or {}), "report": False}
        training = raw["training"]
        for key in ("load_best_model_at_end", "metric_for_best_model", "greater_is_better", "save_total_limit"):
            training.pop(key, None)
        # only the final model is scored: no evaluation or checkpoints on the way (short runs, fewer files)
        training.update(eval_strategy="no", save_strategy="no", **budget.training_overrides())
        lr = self.plan.learning_rates.get(label(strategy), self.plan.learning_rates.get(strategy.name))
        if lr is not None:  # one recipe lr rarely suits head-only and full fine-tuning alike
            training["learning_rate"] = lr
        training["output_dir"] = str(self.plan.output / stage / f"{slug(model)}__{slug(label(strategy))}")
        return raw

    def run_candidate(self, raw: dict, budget: Budget) -> dict[str, Any]:
        from sft_hub.engine import train

        recipe = parse_recipe(raw)
        run_dir = recipe.output_dir
        base = {"model": recipe.model.name_or_path, "strategy": recipe.strategy.to_dict(), "label": label(recipe.strategy),
                "run_dir": str(run_dir)}
        if (run_dir / MANIFEST).is_file() and not self.plan.overwrite:
            stored = read_yaml(run_dir / RECIPE)
            if stored == recipe.raw:
                return {**base, **self.scores(run_dir), "status": "ok", "reused": True, "wall_seconds": None}
        if not self.plan.overwrite and run_dir.exists():
            check_output_dir(run_dir, recipe.raw, overwrite=False)  # another select's candidate: an error, not a failed row
        start = time.perf_counter()
        try:
            out = train(recipe, overwrite=self.plan.overwrite, callbacks=budget.callbacks())
        except SftHubError as exc:  # this candidate cannot run (e.g. a strategy that does not fit the model)
            log.warning("candidate %s failed: %s", run_dir, exc)
            return {**base, "status": "failed", "error": str(exc), "reused": False, "score": None}
        if out["stopped"]:
            raise SftHubError(f"stopped by SIGTERM while training {run_dir}; run the same command to resume")
        wall = time.perf_counter() - start
        return {**base, **self.scores(run_dir), "status": "ok", "reused": False, "wall_seconds": wall}

    def scores(self, run_dir: Path) -> dict[str, Any]:
        """A finished candidate's comparable facts (`compare.run_row`) and its score on the ranking split."""
        row = run_row(run_dir)
        manifest = Run.open(run_dir).manifest
        name = row.pop("metric")["name"]
        for key in ("model", "strategy", "run_dir", "task", "saved_as"):
            row.pop(key)
        return {**row, "metric_name": name, "score": metric_value(manifest, self.ranking.split, name),
                "loss": metric_value(manifest, self.ranking.split, "loss"),
                "reported": {s: metric_value(manifest, s, name) for s in self.ranking.reported}}

    # --- the two stages ------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        plan, t0 = self.plan, time.perf_counter()
        cheap_rows = [self.run_candidate(self.candidate_raw(m, plan.cheap, "cheap", plan.cheap_budget), plan.cheap_budget)
                      for m in plan.models]
        t_cheap = time.perf_counter() - t0
        ranked_models = [r["model"] for r in sort_rows(cheap_rows)]
        top = ranked_models[: plan.top_k]
        fine_rows = [self.run_candidate(self.candidate_raw(m, s, "finetune", plan.budget), plan.budget)
                     for m in top for _, s in plan.strategies]
        t_total = time.perf_counter() - t0
        return self.board(cheap_rows, fine_rows, ranked_models, top, {"cheap": t_cheap, "finetune": t_total - t_cheap, "total": t_total})

    def board(self, cheap_rows, fine_rows, ranked_models, top, wall) -> dict[str, Any]:
        from sft_hub.leaderboard import SCHEMA

        plan, r = self.plan, self.ranking
        metric = next((row["metric_name"] for row in cheap_rows + fine_rows if row.get("metric_name")), None)
        rows = [{**row, "stage": "finetune"} for row in sort_rows(fine_rows)] + [{**row, "stage": "cheap"} for row in sort_rows(cheap_rows)]
        for i, row in enumerate(rows):
            row["rank"] = i + 1 if row["stage"] == "finetune" and row["status"] == "ok" else None
            row.pop("metric_name", None)
        best = next((row for row in rows if row["rank"] == 1), None)
        best_ft = best["model"] if best else None
        return {
            "schema": SCHEMA,
            "recipe": str(Path(plan.recipe).resolve()),
            "overrides": plan.overrides,
            "task": self.base.task,
            "metric": {"name": metric, "greater_is_better": greater_is_better(metric)},
            "ranked_on": {"split": r.split, "carved_from_train_by": "select" if r.carved else "recipe",
                          "validation_fraction": r.fraction, "seed": r.seed, "rows": r.rows},
            "reported_splits": r.reported,
            "cheap": {"strategy": plan.cheap.to_dict(), "sample": plan.sample, "budget": plan.cheap_budget.to_dict(),
                      "ranking": ranked_models},
            "finetune": {"top_k": plan.top_k, "models": top, "budget": plan.budget.to_dict(),
                         "strategies": [spec for spec, _ in plan.strategies]},
            "candidates": rows,
            "best": {"model": best_ft, "strategy": best["label"], "run_dir": best["run_dir"], "score": best["score"]} if best else None,
            "cheap_top_is_best_after_finetune": (ranked_models[0] == best_ft) if best and ranked_models else None,
            "wall_seconds": wall,
        }


def greater_is_better(metric: str | None) -> bool:
    return not (metric or "").endswith(LOWER_IS_BETTER)


def sort_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Best first by the ranking score, ties broken by the lower loss on the ranking split (short runs often tie
    at the majority class, where the loss still tells which candidate learned more); failed candidates last."""
    ok = [r for r in rows if r.get("score") is not None]
    sign = 1 if greater_is_better(next((r.get("metric_name") for r in ok), None)) else -1
    inf = float("inf")
    return sorted(ok, key=lambda r: (-sign * r["score"], inf if r.get("loss") is None else r["loss"])) + [r for r in rows if r.get("score") is None]


def run_select(plan: SelectPlan) -> dict[str, Any]:
    """Run both stages; rank 0 writes leaderboard.{json,md,png} into `plan.output`. Returns the leaderboard."""
    from sft_hub.leaderboard import write

    board = Selector(plan).run()
    if is_main_process():
        write(board, plan.output)
    return board
