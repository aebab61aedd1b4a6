"""Assembling `RUN/report/` (and the comparison of several runs) from a run dir and its eval-split predictions.

Predictions come from the trained model in memory at the end of training (`predictions_after_training`), or
from reloading the run with `sft_hub.inference` (`report_run`): the run dir contract says both are the same.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import SequentialSampler

from sft_hub import runs
from sft_hub.report import classes, curves, mistakes

log = logging.getLogger("sft_hub")


def write_report(run_dir: Path, task: str, manifest: dict, rows: Any = None, logits: np.ndarray | None = None,
                 split: str | None = None, out: Path | None = None) -> Path:
    """Write curves (always) and, given the rows and logits of one split, the per-class results and worst mistakes."""
    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    names = manifest.get("labels")
    sections = [f"# Report: {run_dir.name}\n", f"Run: `{run_dir}` ({task.replace('_', ' ')}, strategy {manifest['strategy']['name']})."]
    if curves.plot_curves({run_dir.name: curves.run_series(run_dir, manifest)}, out / "curves.png"):
        sections.append("## Training curves\n\n![curves](curves.png)")
    predicted = logits is not None and rows is not None and len(rows) > 0
    if predicted:
        labels = np.asarray(rows["labels"])
        sections.append(f"## Split `{split}` ({len(labels)} examples)")
        if names is not None:
            preds = np.asarray(logits).argmax(-1)
            table = classes.per_class(labels.astype(int), preds, names)
            runs.write_json(out / "per_class.json", {"split": split, "labels": names, **table})
            (out / "per_class.md").write_text(classes.table_markdown(table))
            classes.plot_confusion(table["confusion_matrix"], names, out / "confusion_matrix.png", False, f"confusion matrix ({split}, counts)")
            classes.plot_confusion(table["confusion_matrix"], names, out / "confusion_matrix_normalized.png", True,
                                   f"confusion matrix ({split}, each true row sums to 1)")
            sections += ["![confusion matrix, counts](confusion_matrix.png) ![confusion matrix, normalised](confusion_matrix_normalized.png)",
                         "### Per class\n\n" + classes.table_markdown(table)]
        worst = mistakes.describe(task, rows, mistakes.worst(np.asarray(logits), labels, names))
        runs.write_json(out / "mistakes.json", {"split": split, "shown": len(worst), "mistakes": worst})
        title = "Largest errors" if names is None else "Most confident mistakes"
        sections.append(f"### {title}\n\n" + mistakes.table_markdown(worst))
        if task == "image_classification" and mistakes.plot_image_grid(rows, worst, out / "mistakes.png"):
            sections.append("![most confident mistakes](mistakes.png)")
    if predicted or not (out / "README.md").is_file():  # curves only: the index of an earlier full report stays
        (out / "README.md").write_text("\n\n".join(sections) + "\n")
    runs.share_like_umask(out)
    return out


def predictions_after_training(trainer: Any, data: Any, eval_sets: dict[str, Any], enabled: bool) -> tuple | None:
    """(split, raw rows, logits) of the first eval split from the trained model; every rank calls it (predict gathers)."""
    from sft_hub.metrics import logits_of

    if not enabled or not eval_sets:
        return None
    split = next(iter(eval_sets))
    if len(data.splits[split]) and isinstance(data.splits[split][0]["labels"], (list, tuple, np.ndarray)):
        return None  # sequence targets (speech recognition): the report has curves, no confusion matrix
    # Rows in dataset order: Trainer's eval sampler groups by length under `group_by_length`, which would
    # pair each prediction with another row. The default (sequential; under DDP sharded then gathered in order).
    trainer._get_eval_sampler = lambda ds: SequentialSampler(ds) if trainer.args.world_size <= 1 else None
    try:
        output = trainer.predict(eval_sets[split], metric_key_prefix=f"report_{split}")
    except Exception as exc:  # the model is saved already: a report is never worth a lost run
        log.warning("report: predicting split %s failed (%s: %s); run `sft-hub report` on the run", split, type(exc).__name__, exc)
        return None
    finally:
        del trainer._get_eval_sampler
    rows = data.splits[split]
    got, want = np.asarray(output.label_ids if output.label_ids is not None else [], float).reshape(-1), np.asarray(rows["labels"], float).reshape(-1)
    if got.shape != want.shape or not np.allclose(got, want):
        log.warning("report: predictions of split %s did not come back in row order; run `sft-hub report` on the run", split)
        return None
    return split, rows, np.asarray(logits_of(output.predictions))


def write_after_training(run_dir: Path, task: str, manifest: dict, predictions: tuple | None, enabled: bool) -> Path | None:
    """The end-of-training report; a plotting failure is a warning, never a lost run."""
    if not enabled:
        return None
    split, rows, logits = predictions if predictions else (None, None, None)
    try:
        return write_report(run_dir, task, manifest, rows, logits, split)
    except Exception as exc:  # the model is already saved: report the problem and finish the run
        log.warning("report not written (%s: %s); run `sft-hub report %s` to retry", type(exc).__name__, exc, run_dir)
        return None


def report_run(run_dir: str | Path, split: str | None = None, batch_size: int = 32, predict: bool = True) -> Path:
    """Reload a finished run, predict its eval split (or `split`) and write `RUN/report/`."""
    from sft_hub.errors import DataError
    from sft_hub.card import write_model_card
    from sft_hub.inference import load_run, logits

    info = runs.Run.open(run_dir)
    rows = preds = None
    if predict:
        loaded = load_run(run_dir)
        recipe = loaded.info.recipe
        data = loaded.task.load_data(recipe.data, int(recipe.training.get("seed", 42)))
        split = split or (data.eval_splits[0] if data.eval_splits else None)
        if split is not None:
            if split not in data.splits:
                raise DataError(f"--split {split}: not found; splits are {', '.join(data.splits)}")
            rows = data.splits[split]
            if len(rows) and isinstance(rows[0]["labels"], (list, tuple, np.ndarray)):
                rows = None  # sequence targets (speech recognition): curves only
            else:
                preds = logits(loaded, rows, batch_size)
    out = write_report(info.run_dir, info.recipe.task, info.manifest, rows, preds, split)
    write_model_card(info.run_dir, info.recipe, info.manifest)  # the card embeds what the report now holds
    return out


def _main(manifest: dict, split: str) -> str:
    name = manifest["main_metric"]["name"]
    value = manifest["metrics"].get(split, {}).get(f"eval_{split}_{name}")
    return f"{value:.4f}" if isinstance(value, (int, float)) else "n/a"


def compare(run_dirs: list[Path], out: Path) -> Path:
    """`out/README.md`: a comparison table first, then every run's curves overlaid, then links to each report."""
    out.mkdir(parents=True, exist_ok=True)
    infos = [(Path(d), runs.read_json(Path(d) / runs.MANIFEST)) for d in run_dirs]
    splits = sorted({s for _, m in infos for s in m["metrics"]})
    head = ["run", "task", "strategy", "trainable params", "main metric", *splits, "train samples/s", "train time (s)"]
    lines = ["# Comparison\n", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for d, m in infos:
        train = m.get("train", {})
        cells = [d.name, m["task"], m["strategy"]["name"], f"{m['parameters']['trainable']:,}", m["main_metric"]["name"],
                 *[_main(m, s) if s in m["metrics"] else "" for s in splits],
                 f"{train.get('train_samples_per_second', float('nan')):.1f}", f"{train.get('train_runtime', float('nan')):.0f}"]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    names = [d.name if [x.name for x, _ in infos].count(d.name) == 1 else str(d) for d, _ in infos]
    if curves.plot_curves({n: curves.run_series(d, m) for n, (d, m) in zip(names, infos)}, out / "curves.png"):
        lines.append("\n## Training curves\n\n![curves overlaid](curves.png)")
    lines.append("\n## Reports\n")
    lines += [f"- [{n}]({(d / 'report' / 'README.md').resolve()})" for n, (d, _) in zip(names, infos) if (d / "report" / "README.md").is_file()]
    (out / "README.md").write_text("\n".join(lines) + "\n")
    runs.write_json(out / "comparison.json", [{"run": str(d), "manifest_metrics": m["metrics"], "main_metric": m["main_metric"]} for d, m in infos])
    return out
