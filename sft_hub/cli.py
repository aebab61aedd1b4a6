"""`sft-hub` command line: train | eval | predict | report | export | push | select | compare | recipes | demo.

Every command takes `--help`. Bad input ends with one line `error: ...` naming the field, file or
column at fault (exit status 2); `--traceback` shows the full Python traceback instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from sft_hub.errors import SftHubError

log = logging.getLogger("sft_hub")
DEMO_RECIPE = "text_classification/sentiment_minilm_lora.yaml"


def recipes_dir() -> Path:
    for candidate in (Path(__file__).resolve().parents[1] / "recipes", Path.cwd() / "recipes"):
        if candidate.is_dir():
            return candidate
    raise SftHubError("recipes folder not found: run from a checkout of sft-hub")


def cmd_train(a: argparse.Namespace) -> None:
    from sft_hub.config import load_recipe
    from sft_hub.console import train_summary
    from sft_hub.engine import train

    start = time.perf_counter()
    recipe = load_recipe(a.recipe, a.overrides)
    resume: bool | str = a.resume if a.resume else not a.no_resume
    out = train(recipe, overwrite=a.overwrite, resume=resume)
    if out["manifest"] is not None:
        for split, metrics in out["metrics"].items():
            print(_format_metrics(split, metrics))
        print("\n".join(train_summary(out, time.perf_counter() - start)))


def _format_metrics(split: str, metrics: dict) -> str:
    shown = {k.split("_", 2)[-1] if k.startswith("eval_") else k: v for k, v in metrics.items()
             if not k.endswith(("runtime", "per_second", "epoch"))}
    return f"{split}: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())


def _positive(flag: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise SftHubError(f"{flag}: must be >= 1, got {value}")


def cmd_eval(a: argparse.Namespace) -> None:
    from sft_hub.console import eval_summary
    from sft_hub.inference import evaluate, load_run

    start = time.perf_counter()
    _positive("--batch-size", a.batch_size)

    loaded = load_run(a.run_dir, allow_base_mismatch=a.allow_base_mismatch)
    results = evaluate(loaded, a.split, a.batch_size)
    if a.json:
        print(json.dumps(results, indent=2))
    else:
        for split, metrics in results.items():
            print(_format_metrics(split, metrics))
    samples = sum(int(m.get("num_examples", 0)) for m in results.values())
    main = loaded.info.manifest["main_metric"]["name"]  # stdout stays data; the summary goes to stderr
    print("\n".join(eval_summary(loaded.info.run_dir, results, main, samples, time.perf_counter() - start)), file=sys.stderr)


def cmd_predict(a: argparse.Namespace) -> None:
    from sft_hub.console import eval_summary
    from sft_hub.inference import load_adapters, load_run, predict

    start = time.perf_counter()
    _positive("--top-k", a.top_k)
    _positive("--batch-size", a.batch_size)
    if a.file and not Path(a.file).is_file():
        raise SftHubError(f"--file {a.file}: file not found")
    if a.adapter:  # several adapters on one base: every positional argument is an input
        views, inputs = load_adapters(a.adapter, allow_base_mismatch=a.allow_base_mismatch), a.args
    else:
        if not a.args:
            raise SftHubError("predict: give RUN_DIR (or --adapter RUN_DIR ...) and inputs")
        views, inputs = [load_run(a.args[0], allow_base_mismatch=a.allow_base_mismatch)], a.args[1:]
    if not inputs and not a.file:
        raise SftHubError("predict: give inputs as arguments or --file FILE")
    rows = views[0].task.read_inputs(views[0].info.recipe.data, inputs, Path(a.file) if a.file else None)
    for view in views:
        prefix = f"{view.info.run_dir}\t" if len(views) > 1 else ""
        for item in predict(view, rows, a.batch_size, a.top_k):
            if a.json:
                print(json.dumps({"run": str(view.info.run_dir), **item} if len(views) > 1 else item))
            elif "text" in item:  # speech recognition: the transcript
                print(f"{prefix}{item['text']}\t{item['input']}")
            elif "labels" in item:  # multi-label: every label above its threshold ("-" for none)
                shown = ",".join(f"{x['label']}:{x['score']:.3f}" for x in item["labels"]) or "-"
                print(f"{prefix}{shown}\t{item['input']}")
            elif "label" in item:
                print(f"{prefix}{item['label']}\t{item['score']:.3f}\t{item['input']}")
            else:
                print(f"{prefix}{item['score']:.4f}\t{item['input']}")
    where = ", ".join(str(v.info.run_dir) for v in views)
    print("\n".join(eval_summary(where, {}, "", len(rows) * len(views), time.perf_counter() - start, "predicted")), file=sys.stderr)


def cmd_report(a: argparse.Namespace) -> None:
    from sft_hub.report.build import compare, report_run

    if len(a.run_dirs) > 1 and not a.out:
        raise SftHubError("report: several runs need --out DIR for the comparison (each run's own report goes to RUN/report)")
    for run_dir in a.run_dirs:
        where = report_run(run_dir, split=a.split, batch_size=a.batch_size, predict=not a.curves_only)
        print(f"report written to {where}")
    if len(a.run_dirs) > 1:
        print(f"comparison written to {compare([Path(d) for d in a.run_dirs], Path(a.out)) / 'README.md'}")


def cmd_export(a: argparse.Namespace) -> None:
    from sft_hub.export import export_merged

    if not a.merge:
        raise SftHubError("export: only --merge is supported (the run dir already holds the adapter itself)")
    out = export_merged(a.run_dir, a.out, allow_base_mismatch=a.allow_base_mismatch)
    check = f"max |logit diff| vs the run: {out['max_abs_diff']:.2e}" if out["max_abs_diff"] is not None else out["note"]
    print(f"merged model written to {out['out']} ({check})")


def cmd_push(a: argparse.Namespace) -> None:
    from sft_hub.hub import check_repo_id, push

    check_repo_id(a.repo_id)

    where = push(Path(a.run_dir), a.repo_id, private=a.private, merged=a.merged, dry_run=Path(a.dry_run) if a.dry_run else None)
    print(f"dry run: upload folder written to {where}" if a.dry_run else f"pushed to {where}")


def cmd_select(a: argparse.Namespace) -> None:
    from sft_hub.selection import SelectPlan, default_cheap, is_main_process, run_select
    from sft_hub.selection_spec import parse_budget, parse_learning_rates, parse_strategies, split_list

    models = split_list(a.models, "--models")
    plan = SelectPlan(
        recipe=a.recipe, overrides=a.overrides, models=models, strategies=parse_strategies(a.strategies),
        cheap=parse_strategies(a.cheap or default_cheap(), "--cheap")[0][1],
        output=Path(a.output or f"runs/select_{Path(a.recipe).stem}"), sample=a.sample, top_k=a.finetune_top,
        budget=parse_budget(a.budget), cheap_budget=parse_budget(a.cheap_budget, "--cheap-budget"),
        val_fraction=a.val_fraction, val_max=a.val_max, overwrite=a.overwrite, learning_rates=parse_learning_rates(a.lr))
    board = run_select(plan)
    if is_main_process():
        from sft_hub.leaderboard import markdown

        print(json.dumps(board, indent=2) if a.json else markdown(board))
        print(f"leaderboard written to {plan.output}/leaderboard.{{json,md,png}}", file=sys.stderr)


def cmd_compare(a: argparse.Namespace) -> None:
    from sft_hub.compare import compare, markdown

    rows = compare(a.run_dirs)
    print(json.dumps(rows, indent=2) if a.json else markdown(rows))


def cmd_recipes(a: argparse.Namespace) -> None:
    import yaml

    if a.strategies:
        print_strategies()
        return
    root = recipes_dir()
    for path in sorted(root.rglob("*.yaml")):
        raw = yaml.safe_load(path.read_text()) or {}
        print(f"{str(path.relative_to(root)):<55} {raw.get('description', '')}")


def print_strategies() -> None:
    """Every registered strategy: name, what it saves, whether it merges, and each option with its default."""
    from sft_hub import strategies
    from sft_hub.strategies.base import option_defaults

    for cls in strategies.available():
        aliases = {v: k for k, v in getattr(cls, "aliases", {}).items()}
        print(f"{cls.name}: saved_as={cls.saved_as} merges={str(cls.merges).lower()}"
              f"{'' if cls.needs_training_loop else ' (no training loop)'}")
        for name, default in option_defaults(cls.Config):
            alias = f" (alias: {aliases[name]})" if name in aliases else ""
            print(f"  {name}{alias}: {default!r}")
        if not option_defaults(cls.Config):
            print("  (no options)")


def cmd_demo(a: argparse.Namespace) -> None:
    from sft_hub.demo import run_demo

    run_demo(recipes_dir() / DEMO_RECIPE, a.output_dir, a.overrides)


class _Parser(argparse.ArgumentParser):
    """Usage mistakes end like every other mistake: one line `error: ...`, exit status 2."""

    def error(self, message: str):
        print(f"error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="sft-hub", description="Supervised fine-tuning recipes on one Trainer engine.")
    p.add_argument("--traceback", action="store_true", help="show full Python tracebacks for errors")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a recipe into its run directory (training.output_dir)")
    t.add_argument("recipe", help="recipe YAML file")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. training.learning_rate=3e-5 strategy.r=16")
    t.add_argument("--overwrite", action="store_true", help="replace whatever the output dir holds")
    t.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                   help="resume from the newest complete checkpoint (default when the run dir holds this recipe), or from CHECKPOINT")
    t.add_argument("--no-resume", action="store_true", help="start from scratch even if complete checkpoints exist")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a run directory on its eval splits (or --split)")
    e.add_argument("run_dir")
    e.add_argument("--split", help="split to evaluate (default: the recipe's eval splits)")
    e.add_argument("--batch-size", type=int, default=None, help="default: 64 for text (length-sorted batches), 32 for images and audio")
    e.add_argument("--json", action="store_true", help="print metrics as JSON")
    e.add_argument("--allow-base-mismatch", action="store_true", help="load even if the base's fingerprint differs")
    e.set_defaults(func=cmd_eval)

    r = sub.add_parser("predict", help="predict with a run directory, or with several adapters on one base")
    r.add_argument("args", nargs="*", metavar="RUN_DIR INPUT", help="run dir then inputs (text: a sentence, or 'first ||| second' "
                   "for pair tasks; images/audio: file paths); with --adapter, inputs only")
    r.add_argument("--adapter", action="append", metavar="RUN_DIR", help="adapter run to apply (repeat: base loaded once)")
    r.add_argument("--file", help="inputs from a file: text runs read CSV/TSV/JSON/JSONL (columns as in the recipe); image and audio runs read a text file with one image/audio path per line")
    r.add_argument("--top-k", type=int, default=1)
    r.add_argument("--batch-size", type=int, default=None, help="default: 64 for text (length-sorted batches), 32 for images and audio")
    r.add_argument("--json", action="store_true", help="one JSON object per line")
    r.add_argument("--allow-base-mismatch", action="store_true", help="load even if the base's fingerprint differs")
    r.set_defaults(func=cmd_predict)

    rp = sub.add_parser("report", help="write RUN/report: curves, confusion matrix, per-class table, worst mistakes")
    rp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    rp.add_argument("--out", help="folder for the comparison of several runs (table first, then curves overlaid)")
    rp.add_argument("--split", help="split to predict for the confusion matrix and mistakes (default: the first eval split)")
    rp.add_argument("--batch-size", type=int, default=32)
    rp.add_argument("--curves-only", action="store_true", help="curves from metrics.jsonl only: load no model")
    rp.set_defaults(func=cmd_report)

    x = sub.add_parser("export", help="merge a run's adapter (or head) into its base: a standalone HF model folder")
    x.add_argument("run_dir")
    x.add_argument("--merge", action="store_true", help="merge the adapter into the base (required)")
    x.add_argument("--out", required=True, help="new folder for the merged model")
    x.add_argument("--allow-base-mismatch", action="store_true")
    x.set_defaults(func=cmd_export)

    u = sub.add_parser("push", help="publish a run's adapter (or merged model) with a model card to the Hub")
    u.add_argument("run_dir")
    u.add_argument("--repo-id", required=True, help="OWNER/NAME on the Hub")
    u.add_argument("--private", action="store_true")
    u.add_argument("--merged", action="store_true", help="upload the merged standalone model instead of the adapter")
    u.add_argument("--dry-run", metavar="DIR", help="write exactly the folder that would be uploaded, upload nothing")
    u.set_defaults(func=cmd_push)

    s = sub.add_parser("select", help="rank backbones x strategies for a recipe: cheap stage on a sample, then short fine-tunes of the top K")
    s.add_argument("recipe", help="recipe YAML file (its model is replaced by each of --models)")
    s.add_argument("overrides", nargs="*", help="dotted overrides applied to every candidate")
    s.add_argument("--models", required=True, help="comma-separated bases: Hub ids, local folders, embedded/..., timm architectures")
    s.add_argument("--strategies", default="head,lora,full",
                   help="comma-separated strategy specs: name, name:ARG (first option), name:key=value, name.key=value")
    s.add_argument("--cheap", help="strategy of the cheap stage (default: linear_probe when registered, else head)")
    s.add_argument("--sample", type=int, default=2000, help="training rows for the cheap stage (default 2000)")
    s.add_argument("--cheap-budget", default="1epoch", help="training budget of a cheap candidate (default 1epoch; a probe ignores it)")
    s.add_argument("--finetune-top", type=int, default=2, metavar="K", help="fine-tune the K best backbones of the cheap stage (default 2)")
    s.add_argument("--budget", default="200steps", help="budget of each fine-tune: 200steps, 2epochs, 5min, 90s (default 200steps)")
    s.add_argument("--lr", help="learning rate per strategy name or label, e.g. full=5e-5,head=5e-3 (default: the recipe's for all)")
    s.add_argument("--val-fraction", type=float, help="fraction of train carved off to rank on (default: the recipe's, else 0.1)")
    s.add_argument("--val-max", type=int, help="cap the carved ranking split at this many rows")
    s.add_argument("--output", help="folder for candidate runs and the leaderboard (default runs/select_<recipe>)")
    s.add_argument("--overwrite", action="store_true", help="retrain candidates whose run dirs already exist")
    s.add_argument("--json", action="store_true", help="print the leaderboard JSON instead of the Markdown table")
    s.set_defaults(func=cmd_select)

    m = sub.add_parser("compare", help="compare finished runs: strategy, parameters, saved bytes, time, memory, metric")
    m.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    m.add_argument("--json", action="store_true", help="print the rows as JSON")
    m.set_defaults(func=cmd_compare)

    c = sub.add_parser("recipes", help="list the bundled recipes with a one-line description each (or --strategies)")
    c.add_argument("--strategies", action="store_true", help="list the registered strategies with their options and defaults")
    c.set_defaults(func=cmd_recipes)

    d = sub.add_parser("demo", help="offline demo: LoRA on the embedded MiniLM with the built-in sentiment data")
    d.add_argument("--output-dir", default="runs/demo_sentiment_minilm_lora")
    d.add_argument("overrides", nargs="*", help="dotted overrides for the demo recipe")
    d.set_defaults(func=cmd_demo)
    return p


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """argparse, plus what users type: words after a flag (`train R --overwrite a=1`, `predict RUN --json "text"`)
    still belong to the trailing list (overrides, or predict's inputs); argparse alone rejects them."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    trailing = "overrides" if hasattr(args, "overrides") else "args" if args.command == "predict" else None
    if trailing:
        stray = [x for x in extra if x.startswith("-")]
        if stray:
            parser.error(f"unrecognized arguments: {' '.join(stray)}")
        setattr(args, trailing, list(getattr(args, trailing)) + extra)
        resume = getattr(args, "resume", None)
        if isinstance(resume, str) and "=" in resume and not os.path.exists(resume):
            # `--resume training.seed=1`: the optional CHECKPOINT swallowed an override
            args.resume, args.overrides = True, [resume] + args.overrides
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.command not in ("recipes",):  # reloading a run is routine: only warnings that matter to the user
        from sft_hub.console import setup

        setup(quiet_libraries=args.command in ("eval", "predict", "export", "push", "report", "compare"))
    try:
        args.func(args)
    except SftHubError as exc:
        if args.traceback:
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
