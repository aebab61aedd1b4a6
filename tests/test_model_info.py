"""Tasks describe their models (`describe_model` -> ModelInfo) generically, and know nothing of strategies."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, write_tiny_bert
from audio_fixtures import model_cfg as audio_cfg
from image_fixtures import model_cfg as image_cfg

from sft_hub.model_info import ModelInfo
from sft_hub.schema import from_dict
from sft_hub.strategies.base import ModelInfo as StrategiesModelInfo
from sft_hub.tasks import audio, image, text


def test_bert_is_described_bottom_to_top(tmp_path):
    built = text.build_model(from_dict(text.ModelConfig, {"name_or_path": str(write_tiny_bert(tmp_path / "b"))}, "model"), ["a", "b"])
    assert built.info == ModelInfo(family="bert", blocks=["bert.encoder.layer.0", "bert.encoder.layer.1"], head=["classifier"],
                                   final=["bert.pooler"], embeddings=["bert.embeddings"], modality="text")
    assert text.describe_model(built.model) == built.info  # the generic head finder agrees with the loader's
    assert StrategiesModelInfo is ModelInfo


@pytest.mark.parametrize("arch,family,blocks,final,embeddings", [
    ("test_resnet", "resnet", [f"timm_model.layer{i}" for i in range(1, 5)], [], ["timm_model.conv1", "timm_model.bn1"]),
    ("test_vit", "vit", [f"timm_model.blocks.{i}" for i in range(6)], ["timm_model.norm"], ["timm_model.patch_embed"]),
    ("test_convnext", "convnext", [f"timm_model.stages.{i}" for i in range(4)], [], ["timm_model.stem"]),
])
def test_timm_models_are_described(arch, family, blocks, final, embeddings):
    info = image.build_model(image_cfg(name_or_path=arch), ["a", "b"]).info
    assert (info.family, info.blocks, info.final, info.embeddings, info.modality) == (family, blocks, final, embeddings, "image")
    assert info.head and all(h.startswith("timm_model.") for h in info.head)


@pytest.mark.parametrize("kind,family,blocks,head", [
    ("wav2vec2", "wav2vec2", ["wav2vec2.encoder.layers.0"], ["projector", "classifier"]),
    ("ast", "ast", None, ["classifier"]),
    ("whisper", "whisper", ["encoder.layers.0"], ["projector", "classifier"]),
])
def test_audio_models_are_described(kind, family, blocks, head):
    built = audio.build_model(audio_cfg(kind), ["a", "b"])
    info = built.info
    assert info.family == family and info.head == head and info.modality == "audio"
    assert len(info.blocks) == built.model.config.num_hidden_layers and all(b.rsplit(".", 1)[-1].isdigit() for b in info.blocks)
    if blocks:
        assert info.blocks == blocks
    assert info.embeddings and not set(info.embeddings) & set(info.blocks)


def _module_imports(path: Path) -> set[str]:
    """sft_hub modules imported at module level (imports inside functions are not counted)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sft_hub"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("sft_hub")}
    return found


def _component(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "sft_hub"


def test_no_import_circles_between_components():
    """config, strategies, tasks, runs, export, hub, ... import each other in one direction only."""
    graph: dict[str, set[str]] = {}
    for path in (REPO / "sft_hub").rglob("*.py"):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        graph.setdefault(_component(module), set()).update(
            c for c in map(_component, _module_imports(path)) if c not in (_component(module), "sft_hub"))
    seen, stack = set(), []

    def visit(node: str) -> None:
        if node in stack:
            raise AssertionError(f"import circle: {' -> '.join(stack[stack.index(node):] + [node])}")
        if node in seen:
            return
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            visit(nxt)
        stack.pop()
        seen.add(node)

    for node in sorted(graph):
        visit(node)
    assert {"strategies", "tasks", "training_args"} <= graph["config"] and "export" in graph["hub"] and "hub" not in graph["export"]


def test_tasks_never_import_strategies():
    code = "import sys, sft_hub.tasks.text, sft_hub.tasks.image, sft_hub.tasks.audio; print('sft_hub.strategies' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "False"
