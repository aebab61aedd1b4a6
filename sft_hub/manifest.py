"""The run manifest: everything needed to trust, reload and reproduce a run, in one JSON file."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import platform
from typing import Any

from sft_hub import __version__
from sft_hub.base_model import BaseRef

FORMAT = "sft-hub-run/2"  # 2: `base.ref` (a BaseRef) replaces the `base.resolved` string of format 1
LIBRARIES = ("torch", "transformers", "datasets", "accelerate", "peft", "timm", "safetensors", "huggingface_hub", "torchcodec", "soundfile")


def library_versions() -> dict[str, str]:
    out = {"sft-hub": __version__, "python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def build_manifest(recipe, built, base: BaseRef, base_files: dict[str, str], data, frozen_sha, trained_sha, params, metrics,
                   train_metrics, args, task) -> dict[str, Any]:
    main_metric = task.main_metric(recipe.data, data.labels) if hasattr(task, "main_metric") else "accuracy"
    first = next(iter(metrics.values()), {})
    prefix = f"eval_{next(iter(metrics), '')}_"
    return {
        "format": FORMAT,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "task": recipe.task,
        "base": {
            "ref": base.to_dict(),
            "name_or_path": recipe.model.name_or_path,
            "revision": base.revision,
            "files_sha256": base_files,
            "frozen_sha256": frozen_sha,
        },
        "strategy": recipe.strategy.to_dict(),
        "saved_as": recipe.strategy.saved_as,
        "head_modules": built.head_modules,
        "labels": data.labels,
        "regression": data.is_regression,
        "splits": {name: len(ds) if hasattr(ds, "__len__") else "streamed" for name, ds in data.splits.items()},
        "data_info": data.info,
        "parameters": params,
        "trained_sha256": trained_sha,
        "seed": args.seed,
        "world_size": args.world_size,
        "precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
        "main_metric": {"name": main_metric, "value": first.get(prefix + main_metric)},
        "metrics": metrics,
        "train": {k: v for k, v in train_metrics.items()},
        "versions": library_versions(),
    }
