"""The `linear_probe` strategy through the engine: one ordinary run per modality that reloads and exports to
scikit-learn's own probabilities, and a second run on the same base and data that reads the feature cache.

Offline: tiny BERT / timm ResNet / wav2vec2 (projector fused) built from configs, data in tmp_path; every
run uses a feature cache inside tmp_path (`strategy.cache_dir`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_features import Prepared, inputs, raw_recipe  # noqa: F401  (module fixture)

from sft_hub import features as F
from sft_hub import strategies
from sft_hub.config import parse_recipe
from sft_hub.engine import train
from sft_hub.errors import ConfigError
from sft_hub.export import export_merged
from sft_hub.probe_fit import ProbeOptions, fit_probe
from sft_hub.runs import Run


def probe_recipe(kind: str, inputs: dict, out: Path, cache: Path) -> dict:
    raw = raw_recipe(kind, inputs, out)
    raw["strategy"] = {"name": "linear_probe", "cv": 2, "cache_dir": str(cache)}
    raw["training"] = {"output_dir": str(out), "per_device_eval_batch_size": 8, "seed": 3, "report_to": "none", "disable_tqdm": True}
    return raw


def train_probabilities(model: torch.nn.Module, p: Prepared) -> np.ndarray:
    p.model = model.eval()
    return p.probabilities(p.data.train_split)


@pytest.mark.parametrize("kind", ["text", "image", "wav2vec2"])
def test_probe_run_reloads_and_exports_to_sklearn_probabilities(inputs, tmp_path, kind):  # noqa: F811
    cache = tmp_path / "cache"
    raw = probe_recipe(kind, inputs, tmp_path / "run", cache)
    manifest = train(parse_recipe(raw))["manifest"]
    assert manifest["saved_as"] == "head" and manifest["train"]["features_cache"] == "extracted"
    head = load_file(str(tmp_path / "run" / "head" / "head.safetensors"))
    assert sum(t.numel() for t in head.values()) == manifest["parameters"]["trainable"] < manifest["parameters"]["total"] / 10
    assert all(k.startswith(tuple(h + "." for h in manifest["head_modules"])) for k in head)  # only the head is saved

    # scikit-learn on the cached features, refitted with the run's options (lbfgs is deterministic)
    X = F.load_features(cache / manifest["train"]["features_key"])
    p = Prepared(raw, build=False)
    y = np.asarray(p.data.splits[p.data.train_split]["labels"])
    probe, summary = fit_probe(X, y, False, ProbeOptions(cv=2, seed=3))
    assert summary["C"] == manifest["train"]["probe_C"]
    want = probe.predict_proba(X)

    reloaded = Run.open(tmp_path / "run").load_model()
    np.testing.assert_allclose(train_probabilities(reloaded, p), want, atol=1e-5, rtol=0)
    export_merged(tmp_path / "run", tmp_path / "merged")
    standalone = p.task.build_model(p.recipe.model.__class__(**{**p.recipe.model.__dict__, "name_or_path": str(tmp_path / "merged")}),
                                    p.data.labels).model
    np.testing.assert_allclose(train_probabilities(standalone, p), want, atol=1e-5, rtol=0)


def test_second_probe_on_the_same_base_and_data_reads_the_cache(inputs, tmp_path):  # noqa: F811
    """(Other data, base or preprocessing give another key: test_features.py.)"""
    cache = tmp_path / "cache"
    first = train(parse_recipe(probe_recipe("text", inputs, tmp_path / "one", cache)))["manifest"]
    second = train(parse_recipe(probe_recipe("text", inputs, tmp_path / "two", cache)))["manifest"]
    assert (first["train"]["features_cache"], second["train"]["features_cache"]) == ("extracted", "hit")
    assert first["train"]["features_key"] == second["train"]["features_key"] and len(list(cache.iterdir())) == 1
    assert first["trained_sha256"] == second["trained_sha256"]  # the same head, fitted from the cached features
    keys = ("eval_validation_loss", "eval_validation_accuracy")
    assert [first["metrics"]["validation"][k] for k in keys] == [second["metrics"]["validation"][k] for k in keys]


def test_linear_probe_is_registered_with_checked_options():
    cls = strategies.get("linear_probe")
    assert (cls.saved_as, cls.merges, cls.needs_training_loop) == ("head", True, False)
    assert strategies.parse_strategy({"name": "linear_probe", "Cs": 4}).to_dict() == {"name": "linear_probe", "Cs": 4}
    for raw, match in (({"cv": 1}, "strategy.cv: at least 2"), ({"class_weight": "auto"}, "strategy.class_weight"),
                       ({"Cs": [1.0, -1.0]}, "strategy.Cs"), ({"C": 1.0}, "strategy.C: unknown key")):
        with pytest.raises(ConfigError, match=match):
            strategies.parse_strategy({"name": "linear_probe", **raw})


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_process_probe_extracts_shards_and_fits_once(inputs, tmp_path):  # noqa: F811
    """gloo DDP on CPU: each rank extracts its half, rank 0 gathers, fits and caches; both ranks end with the same head."""
    import os
    import re
    import subprocess
    import sys

    import yaml
    from conftest import REPO

    raw = probe_recipe("text", inputs, tmp_path / "run", tmp_path / "cache")
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(raw))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "1", "MASTER_PORT": "29531", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "sft_hub", "train", str(tmp_path / "recipe.yaml")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shas = dict(re.findall(r"rank (\d+): trained weights sha256 ([0-9a-f]{64})", proc.stderr))
    assert set(shas) == {"0", "1"} and shas["0"] == shas["1"]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and manifest["train"]["features_cache"] == "extracted"
    X = F.load_features(tmp_path / "cache" / manifest["train"]["features_key"])
    p = Prepared(raw)  # one process, the whole split: the gathered features are the same rows in the same order
    single = F.extract(p.model, p.cut, p.encoded["train"], p.collate, batch_size=8)
    np.testing.assert_allclose(X, single, atol=1e-5)
