"""`sft-hub select` against running every candidate to the end: wall time, and whether select's choice holds.

1. Runs `sft-hub select` (same flags) and times it.
2. Every backbone x strategy run to the end of the recipe's schedule is estimated (not run): full-schedule steps x
   measured seconds per step, plus the candidate's measured load/eval overhead. Seconds per step come from the
   select's own fine-tunes; pairs select pruned get a short timing run (`--timing-steps`, under <out>/timing).
3. `--verify`: every backbone is trained to the end with the strategy select ranked first (real runs, under
   <out>/end), and the best of them is compared with the cheap stage's top backbone and with select's choice.

    python benchmarks/select_vs_all.py RECIPE [overrides] --models a,b,c --strategies head,lora,full [select flags] [--verify]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sft_hub.compare import markdown_table, num  # noqa: E402
from sft_hub.leaderboard import short_model  # noqa: E402
from sft_hub.selection import SelectPlan, Selector, default_cheap, run_select  # noqa: E402
from sft_hub.selection_spec import Budget, label, parse_budget, parse_learning_rates, parse_strategies, split_list  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    for flag, default in (("--models", None), ("--strategies", "head,lora,full"), ("--cheap", None), ("--lr", None),
                          ("--budget", "200steps"), ("--cheap-budget", "1epoch"), ("--output", None)):
        p.add_argument(flag, default=default, required=flag == "--models")
    p.add_argument("--sample", type=int, default=2000)
    p.add_argument("--finetune-top", type=int, default=2)
    p.add_argument("--val-fraction", type=float)
    p.add_argument("--val-max", type=int)
    p.add_argument("--timing-steps", type=int, default=10)
    p.add_argument("--verify", action="store_true", help="train every backbone to the end with select's best strategy")
    a = p.parse_args()
    out = Path(a.output or f"runs/select_{Path(a.recipe).stem}")
    plan = SelectPlan(recipe=a.recipe, overrides=a.overrides, models=split_list(a.models, "--models"),
                      strategies=parse_strategies(a.strategies), cheap=parse_strategies(a.cheap or default_cheap(), "--cheap")[0][1],
                      output=out, sample=a.sample, top_k=a.finetune_top, budget=parse_budget(a.budget),
                      cheap_budget=parse_budget(a.cheap_budget, "--cheap-budget"), val_fraction=a.val_fraction,
                      val_max=a.val_max, learning_rates=parse_learning_rates(a.lr))
    start = time.perf_counter()
    board = run_select(plan)
    select_wall = time.perf_counter() - start
    sel = Selector(plan)
    training = sel.base.training
    fine = {(r["model"], r["label"]): r for r in board["candidates"] if r["stage"] == "finetune" and r["status"] == "ok"}
    if not fine:
        raise SystemExit("select fine-tuned nothing (--finetune-top 0, or every fine-tune failed): no step times to estimate from")
    manifest = json.loads((Path(next(iter(fine.values()))["run_dir"]) / "manifest.json").read_text())
    train_rows = manifest["splits"][sel.base.data.train_split]  # every fine-tune trains on the same rows
    per_step = int(training.get("per_device_train_batch_size", 8)) * int(training.get("gradient_accumulation_steps", 1))
    max_steps = int(training.get("max_steps", -1) or -1)
    end = Budget("steps", max_steps) if max_steps > 0 else Budget("epochs", float(training.get("num_train_epochs", 3)))
    end_steps = max_steps if max_steps > 0 else math.ceil(train_rows / per_step) * float(training.get("num_train_epochs", 3))

    rows, total_est = [], 0.0
    for model in plan.models:
        for _, strategy in plan.strategies:
            row = fine.get((model, label(strategy)))
            source = "select fine-tune"
            if row is None:
                raw = sel.candidate_raw(model, strategy, "timing", Budget("steps", a.timing_steps))
                row, source = sel.run_candidate(raw, Budget("steps", a.timing_steps)), f"{a.timing_steps}-step timing run"
            if row["status"] != "ok":
                rows.append([short_model(model), label(strategy), "failed", "-", "-", "-"])
                continue
            sec_step = row["train_seconds"] / row["train_steps"]
            overhead = (row["wall_seconds"] or row["train_seconds"]) - row["train_seconds"]
            est = end_steps * sec_step + overhead
            total_est += est
            rows.append([short_model(model), label(strategy), num(sec_step, ".3f"), num(overhead, ".0f"), num(est, ".0f"), source])
    result = {"select_wall_seconds": select_wall, "all_to_end_estimate_seconds": total_est, "end_steps": end_steps,
              "train_rows": train_rows, "estimate": rows}
    print(f"\nEvery candidate to the end ({end_steps:g} steps each = the recipe's schedule on {train_rows} rows), estimated:\n")
    print(markdown_table(["model", "strategy", "s/step", "overhead s", "est. s to the end", "step time from"], rows))
    print(f"\nselect: {select_wall:.0f} s measured; every candidate to the end: ~{total_est:.0f} s estimated "
          f"({total_est / select_wall:.1f}x)")

    if a.verify and board["best"]:
        best = next(s for _, s in plan.strategies if label(s) == board["best"]["strategy"])
        verified = []
        for model in plan.models:
            row = sel.run_candidate(sel.candidate_raw(model, best, "end", end), end)
            verified.append({"model": model, **{k: row.get(k) for k in ("score", "reported", "train_seconds", "status")}})
        ok = [v for v in verified if v["score"] is not None]
        winner = max(ok, key=lambda v: v["score"])["model"] if ok else None
        result.update(verified=verified, best_after_full_training=winner, cheap_top=board["cheap"]["ranking"][0],
                      select_best=board["best"]["model"])
        print(f"\nEvery backbone trained to the end with {label(best)} (real runs):\n")
        print(markdown_table(["model", f"score ({board['ranked_on']['split']})", *board["reported_splits"], "train s"],
                             [[short_model(v["model"]), num(v["score"], ".4f"), *(num((v["reported"] or {}).get(s), ".4f") for s in board["reported_splits"]),
                               num(v["train_seconds"], ".0f")] for v in verified]))
        print(f"\nbest after full training: {short_model(winner or '-')}; cheap stage's top: {short_model(result['cheap_top'])} "
              f"({'same' if winner == result['cheap_top'] else 'different'}); select's choice: {short_model(result['select_best'])}")
    (out / "select_vs_all.json").write_text(json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
