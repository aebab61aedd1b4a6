"""The console: what sft-hub shows while it works (one bar per phase, a closing summary) and what it keeps quiet.

- `setup()` (every CLI command) hides library noise that says nothing to a user: transformers' LOAD REPORT
  when it only lists the new classification head (it is initialised now and trained, or restored a moment
  later from the run's adapter), FutureWarnings raised inside the libraries sft-hub calls, and the
  per-step progress bars of data loading and weight loading.
- Warnings that matter (sft-hub's own: truncated inputs, skipped files, a base mismatch override, ...) are
  still printed, and `WARNINGS` counts them for the summary.
- `data_bars()` turns `datasets` progress bars on for a preprocessing phase (tokenising / extracting features).
- `attach(trainer)` swaps Trainer's bar-plus-printed-dicts for one training bar (latest loss and eval metric
  as its postfix) and one evaluation bar per evaluation.
- `train_summary` / `eval_summary` are the closing lines of `train`, `eval` and `predict`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any, Iterator

from tqdm.auto import tqdm
from transformers import TrainerCallback

log = logging.getLogger("sft_hub")

# The libraries whose FutureWarnings (deprecations inside their own code paths) sft-hub hides.
_LIBRARIES = r"(transformers|peft|timm|torch|torchvision|torchaudio|torchcodec|datasets|accelerate|huggingface_hub|sklearn)(\.|$)"
# Top-level names of newly initialised classification heads across the model families sft-hub builds.
HEAD_NAMES = {"classifier", "score", "fc", "head", "heads", "projector", "pre_classifier", "last_linear"}
# Messages libraries print that say nothing to a user of sft-hub (logger name, text).
_NOISE = [("DeepSpeed", "Setting accelerator to CPU")]  # deepspeed's import on a CPU machine; accelerate picks devices
_BAR_METRICS = ("accuracy", "pearson", "correlation")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ROW = re.compile(r"^(\S[^|]*?)\s*\|\s*(MISSING|UNEXPECTED|MISMATCH|CONVERSION|OWNED|SKIPPED)\b")


class WarningCounter(logging.Handler):
    """Counts the warnings sft-hub itself logs (printing stays with the normal handlers)."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


WARNINGS = WarningCounter()


def head_only_report(message: str) -> bool:
    """True when a transformers LOAD REPORT lists nothing but a new head (MISSING/MISMATCH) and unused keys."""
    rows = [_ROW.match(_ANSI.sub("", line).strip()) for line in message.splitlines()]
    rows = [(m.group(1).strip(), m.group(2)) for m in rows if m]
    if not rows:
        return False
    for key, status in rows:
        if status == "UNEXPECTED":  # a pretraining head the task model does not use (e.g. cls.predictions)
            continue
        parts = key.removeprefix("timm_model.").split(".")
        if status not in ("MISSING", "MISMATCH") or parts[0] not in HEAD_NAMES:
            return False
    return True


class LoadReportFilter(logging.Filter):
    """Drops transformers' LOAD REPORT when it only says the classification head is new; keeps any other."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "LOAD REPORT" not in message or not head_only_report(message)


def setup(quiet_libraries: bool = False) -> None:
    """Console defaults for a CLI command; `quiet_libraries` also silences transformers' remaining warnings."""
    import datasets
    import transformers

    warnings.filterwarnings("ignore", category=FutureWarning, module=_LIBRARIES)
    transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars
    datasets.disable_progress_bars()  # split generation, label maps, checks: `data_bars` turns them on where they help
    root = transformers.utils.logging.get_logger("transformers")  # installs transformers' handler, which we filter
    # On the loggers that emit the report (a record is dropped before any handler sees it, whichever handlers
    # exist by then) and on the handlers of transformers' root logger (for reports logged elsewhere).
    emitters = [logging.getLogger(name) for name in ("transformers.utils.loading_report", "transformers.modeling_utils")]
    for target in [*emitters, *root.handlers]:
        if not any(isinstance(f, LoadReportFilter) for f in target.filters):
            target.addFilter(LoadReportFilter())
    if quiet_libraries:
        transformers.logging.set_verbosity_error()
    for name, text in _NOISE:  # logger filters survive the library configuring its logger at import time
        logging.getLogger(name).addFilter(lambda record, text=text: text not in record.getMessage())
    sft = logging.getLogger("sft_hub")
    if WARNINGS not in sft.handlers:
        sft.addHandler(WARNINGS)
    WARNINGS.count = 0  # counted per command


@contextlib.contextmanager
def data_bars(enabled: bool = True) -> Iterator[None]:
    """`datasets` progress bars on for one preprocessing phase (off again afterwards if they were off)."""
    import datasets

    was_on = datasets.is_progress_bar_enabled()
    if enabled and not os.environ.get("HF_DATASETS_DISABLE_PROGRESS_BARS"):  # the user's "off" wins
        datasets.enable_progress_bars()
    try:
        yield
    finally:
        if not was_on:
            datasets.disable_progress_bars()


class ProgressBars(TrainerCallback):
    """One training bar (loss and the latest eval metric as postfix) and one bar per evaluation; no printed dicts."""

    def __init__(self) -> None:
        self.train_bar: Any = None
        self.eval_bar: Any = None
        self.postfix: dict[str, str] = {}
        self.done = 0  # eval batches done in an evaluation during training

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.train_bar = tqdm(total=state.max_steps, initial=state.global_step, desc="training", unit="step", dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.train_bar is not None:
            self.train_bar.update(state.global_step - self.train_bar.n)

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if not state.is_world_process_zero or eval_dataloader is None or not hasattr(eval_dataloader, "__len__"):
            return
        if self.train_bar is not None:  # evaluation inside training shows on the training bar: one bar per phase
            self.done = self.done + 1
            self.train_bar.set_description(f"training (evaluating {self.done}/{len(eval_dataloader)})", refresh=True)
            return
        if self.eval_bar is None:
            self.eval_bar = tqdm(total=len(eval_dataloader), desc="evaluating", unit="batch", leave=False, dynamic_ncols=True)
        self.eval_bar.update(1)

    def _close_eval(self) -> None:
        if self.train_bar is not None and self.done:
            self.train_bar.set_description("training", refresh=False)
        self.done = 0
        if self.eval_bar is not None:
            self.eval_bar.close()
        self.eval_bar = None

    def on_evaluate(self, args, state, control, **kwargs):
        self._close_eval()

    def on_predict(self, args, state, control, **kwargs):
        self._close_eval()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.train_bar is None or not logs:
            return
        if "loss" in logs:
            self.postfix["loss"] = f"{logs['loss']:.4g}"
        shown = [k for k in logs if k.startswith("eval_") and k.endswith(_BAR_METRICS)]
        if shown:  # the first eval split's headline metric (eval_accuracy, eval_validation_matched_accuracy, ...)
            self.postfix[shown[0].removeprefix("eval_")] = f"{logs[shown[0]]:.4g}"
        self.train_bar.set_postfix(self.postfix, refresh=False)

    def on_train_end(self, args, state, control, **kwargs):
        if self.train_bar is not None:
            self.train_bar.close()
            self.train_bar = None


def attach(trainer: Any) -> None:
    """Replace Trainer's progress output (a bar plus a printed dict per log) with `ProgressBars`."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    if not trainer.args.disable_tqdm:
        trainer.add_callback(ProgressBars())


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) if Path(path).exists() else 0


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def human_time(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, s = divmod(seconds, 60)
    return f"{minutes}m {s:02d}s" if minutes < 60 else f"{minutes // 60}h {minutes % 60:02d}m"


def _metric(metrics: dict, name: str, split: str | None = None) -> float | None:
    for key in (f"eval_{split}_{name}", f"eval_{name}", name):
        if isinstance(metrics.get(key), (int, float)):
            return float(metrics[key])
    return None


def _warnings_line(skipped: int = 0) -> list[str]:
    parts = []
    if WARNINGS.count:
        parts.append(f"{WARNINGS.count} warning{'s' if WARNINGS.count != 1 else ''} (printed above)")
    if skipped:
        parts.append(f"{skipped} unreadable file{'s' if skipped != 1 else ''} skipped")
    return [f"  note: {'; '.join(parts)}"] if parts else []


def train_summary(out: dict, seconds: float) -> list[str]:
    """Closing lines of a training run: per-split main metric, speed, what was trained and saved, where."""
    manifest, run_dir = out["manifest"], Path(out["run_dir"])
    main = manifest["main_metric"]["name"]
    params, train = manifest["parameters"], manifest.get("train", {})
    saved = run_dir / manifest["saved_as"]
    pct = 100 * params["trainable"] / max(1, params["total"])
    lines = [f"done in {human_time(seconds)}: run saved to {run_dir}"]
    for split, metrics in out["metrics"].items():
        value, n = _metric(metrics, main, split), _metric(metrics, "num_examples", split)
        shown = f"{value:.4f}" if value is not None else "n/a"
        lines.append(f"  {split}: {main} {shown}" + (f" (n={int(n)})" if n is not None else ""))
    speed = train.get("train_samples_per_second")
    lines.append(f"  trained {manifest['strategy']['name']}: {params['trainable']:,} of {params['total']:,} parameters ({pct:.2f}%)"
                 + (f", {speed:.1f} samples/s" if isinstance(speed, (int, float)) else ""))
    lines.append(f"  saved {saved.name}/: {human_bytes(folder_bytes(saved))}")
    if (run_dir / "report" / "README.md").is_file():
        lines.append(f"  report: {run_dir / 'report' / 'README.md'}")
    info = manifest.get("data_info") or {}
    return lines + _warnings_line(int(info.get("skipped_files", 0) or 0) + int(info.get("skipped_images", 0) or 0))


def eval_summary(where: str | Path, results: dict[str, dict], main: str, samples: int, seconds: float, what: str = "evaluated") -> list[str]:
    """Closing lines of `eval` / `predict`: main metric per split (eval), speed and wall time, the run dir."""
    rate = samples / seconds if seconds > 0 else 0.0
    lines = [f"{what} {samples} input{'s' if samples != 1 else ''} in {human_time(seconds)} ({rate:.1f} samples/s) with {where}"]
    for split, metrics in results.items():
        value = _metric(metrics, main, split)
        if value is not None:
            lines.append(f"  {split}: {main} {value:.4f}")
    return lines + _warnings_line()
