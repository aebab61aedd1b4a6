"""The task registry: modality name -> task module (see `base.Task` for what a module provides)."""

from __future__ import annotations

import importlib
from types import ModuleType

from sft_hub.schema import suggest
from sft_hub.errors import ConfigError

TASKS = {
    "text_classification": "sft_hub.tasks.text",
    "image_classification": "sft_hub.tasks.image",
    "audio_classification": "sft_hub.tasks.audio",
    "speech_recognition": "sft_hub.tasks.speech",
}


def get_task(name: str) -> ModuleType:
    if name not in TASKS:
        hint = suggest(name, TASKS) or f" (known: {', '.join(TASKS)})"
        raise ConfigError(f"task: unknown task '{name}'{hint}")
    return importlib.import_module(TASKS[name])
