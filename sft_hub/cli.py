"""`sft-hub` command line: train | eval | predict | recipes | demo.

Every command takes `--help`. Bad input ends with one line `error: ...` naming the field, file or
column at fault (exit status 2); `--traceback` shows the full Python traceback instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
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
    from sft_hub.engine import train

    recipe = load_recipe(a.recipe, a.overrides)
    resume: bool | str = a.resume if a.resume else not a.no_resume
    out = train(recipe, overwrite=a.overwrite, resume=resume)
    if out["manifest"] is not None:
        print(f"run saved to {out['run_dir']}")
        for split, metrics in out["metrics"].items():
            print(_format_metrics(split, metrics))


def _format_metrics(split: str, metrics: dict) -> str:
    shown = {k.split("_", 2)[-1] if k.startswith("eval_") else k: v for k, v in metrics.items()
             if not k.endswith(("runtime", "per_second", "epoch"))}
    return f"{split}: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())


def cmd_eval(a: argparse.Namespace) -> None:
    from sft_hub.inference import evaluate, load_run

    loaded = load_run(a.run_dir, allow_base_mismatch=a.allow_base_mismatch)
    results = evaluate(loaded, a.split, a.batch_size)
    if a.json:
        print(json.dumps(results, indent=2))
    else:
        for split, metrics in results.items():
            print(_format_metrics(split, metrics))


def cmd_predict(a: argparse.Namespace) -> None:
    from sft_hub.inference import load_run, predict

    if not a.inputs and not a.file:
        raise SftHubError("predict: give inputs as arguments or --file FILE")
    loaded = load_run(a.run_dir, allow_base_mismatch=a.allow_base_mismatch)
    rows = loaded.task.read_inputs(loaded.info.recipe.data, a.inputs, Path(a.file) if a.file else None)
    for item in predict(loaded, rows, a.batch_size, a.top_k):
        if a.json:
            print(json.dumps(item))
        elif "label" in item:
            print(f"{item['label']}\t{item['score']:.3f}\t{item['input']}")
        else:
            print(f"{item['score']:.4f}\t{item['input']}")


def cmd_recipes(a: argparse.Namespace) -> None:
    import yaml

    root = recipes_dir()
    for path in sorted(root.rglob("*.yaml")):
        raw = yaml.safe_load(path.read_text()) or {}
        print(f"{str(path.relative_to(root)):<55} {raw.get('description', '')}")


def cmd_demo(a: argparse.Namespace) -> None:
    from sft_hub.demo import run_demo

    run_demo(recipes_dir() / DEMO_RECIPE, a.output_dir, a.overrides)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sft-hub", description="Supervised fine-tuning recipes on one Trainer engine.")
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
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--json", action="store_true", help="print metrics as JSON")
    e.add_argument("--allow-base-mismatch", action="store_true", help="load even if the base's fingerprint differs")
    e.set_defaults(func=cmd_eval)

    r = sub.add_parser("predict", help="predict labels for inputs with a run directory")
    r.add_argument("run_dir")
    r.add_argument("inputs", nargs="*", help="inputs (text: a sentence, or 'first ||| second' for pair tasks)")
    r.add_argument("--file", help="CSV/TSV/JSON/JSONL file of inputs (columns as in the recipe)")
    r.add_argument("--top-k", type=int, default=1)
    r.add_argument("--batch-size", type=int, default=32)
    r.add_argument("--json", action="store_true", help="one JSON object per line")
    r.add_argument("--allow-base-mismatch", action="store_true", help="load even if the base's fingerprint differs")
    r.set_defaults(func=cmd_predict)

    c = sub.add_parser("recipes", help="list the bundled recipes with a one-line description each")
    c.set_defaults(func=cmd_recipes)

    d = sub.add_parser("demo", help="offline demo: LoRA on the embedded MiniLM with the built-in sentiment data")
    d.add_argument("--output-dir", default="runs/demo_sentiment_minilm_lora")
    d.add_argument("overrides", nargs="*", help="dotted overrides for the demo recipe")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
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
