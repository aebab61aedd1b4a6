"""TensorBoard out of the box: with `report_to: tensorboard` the event files go to `<run>/tensorboard`.

transformers' TensorBoardCallback would write under `<run>/checkpoints/runs/<date>_<host>` (its default is
relative to `output_dir`, which sft-hub points at the checkpoints folder); one fixed folder per run keeps
a resumed run's events together and lets `tensorboard --logdir runs/` compare runs by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

FOLDER = "tensorboard"


def wants_tensorboard(report_to: Any) -> bool:
    values = [report_to] if isinstance(report_to, str) else list(report_to or [])
    return any(v in ("tensorboard", "all") for v in values)


def installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None or importlib.util.find_spec("tensorboardX") is not None


def route(trainer: Any, run_dir: Path) -> None:
    """Point the Trainer's TensorBoard callback (if any) at `<run>/tensorboard`."""
    from transformers.integrations import TensorBoardCallback

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback) and callback.tb_writer is None:
            callback.logging_dir = str(Path(run_dir) / FOLDER)
