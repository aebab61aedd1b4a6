"""Frozen features and the linear probe fit: the cut point per modality, exact fusion into the head, the cache.

Offline: tiny BERT, AST and Whisper (with its projector) built from configs, data in tmp_path.
Engine-level runs of the `linear_probe` strategy (text, image and wav2vec2: reload, export, cache hit
across runs) are in test_linear_probe.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import text_recipe, write_sentiment_csv, write_tiny_bert
from audio_fixtures import TINY, make_clips
from image_fixtures import make_folder

from sft_hub import features as F
from sft_hub import probe_fit as P
from sft_hub.config import parse_recipe
from sft_hub.errors import RunError
from sft_hub.tasks import get_task


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("probe")
    return {"bert": write_tiny_bert(root / "bert"), "csv": write_sentiment_csv(root, n_train=40, n_val=12),
            "images": make_folder(root / "images", {"train": 6, "val": 3}), "clips": make_clips(root / "clips", per_class=6)}


def raw_recipe(kind: str, inputs: dict, out: Path) -> dict:
    training = {"output_dir": str(out)}
    if kind == "text":
        return text_recipe(inputs["bert"], inputs["csv"], out, {"name": "head"})
    if kind == "image":
        return {"task": "image_classification", "model": {"name_or_path": "test_resnet", "image_size": 32},
                "data": {"folder": str(inputs["images"])}, "strategy": "head", "training": training}
    name, config, fe = TINY[kind]
    return {"task": "audio_classification", "model": {"name_or_path": name, "config": dict(config), "feature_extractor": dict(fe)},
            "data": {"source": "filenames", "data_dir": str(inputs["clips"]), "label_regex": r"^(\d)_",
                     "split_regex": {"test": r"_[0-2]\.wav$"}}, "strategy": "head", "training": training}


class Prepared:
    def __init__(self, raw: dict, build: bool = True) -> None:
        self.recipe = recipe = parse_recipe(raw)
        self.task = get_task(recipe.task)
        self.data = self.task.load_data(recipe.data, 0)
        self.processor = self.task.load_processor(recipe.model)
        self.encoded = self.task.encode(self.data.splits, self.processor, recipe.data, recipe.model, None)  # no augmentation
        self.collate = self.task.collator(self.processor, recipe.data)
        if build:
            torch.manual_seed(0)
            self.built = self.task.build_model(recipe.model, self.data.labels)
            self.model = self.built.model.eval()
            self.cut = F.find_cut(self.model, self.built.head_modules)

    def key(self, split: str) -> F.FeatureKey:
        return F.FeatureKey(F.base_fingerprint(self.model, self.built.head_modules), self.cut.describe(),
                            F.preprocessing_fingerprint(self.task, self.processor, self.recipe.data, self.recipe.task),
                            F.data_fingerprint(self.data.splits[split]))

    def probabilities(self, split: str) -> np.ndarray:
        rows = self.encoded[split]
        batch = self.collate([rows[i] for i in range(len(rows))])
        batch.pop("labels")
        with torch.no_grad():
            return torch.softmax(self.model(**batch).logits.float(), -1).numpy()


# text, image and wav2vec2 (projector bypassed and fused) run end to end in test_linear_probe.py; here the other shapes
@pytest.mark.parametrize("kind,cut", [("ast", ("classifier.dense", ())), ("whisper", ("classifier", ("projector",)))])
def test_probe_written_into_the_head_gives_sklearn_probabilities(inputs, tmp_path, kind, cut):
    p = Prepared(raw_recipe(kind, inputs, tmp_path / "run"))
    assert (p.cut.classifier, p.cut.bypass) == cut
    train, evals = p.data.train_split, p.data.eval_splits[0]
    X = F.extract(p.model, p.cut, p.encoded[train], p.collate, batch_size=5)
    assert X.shape == (len(p.data.splits[train]), p.model.get_submodule(cut[1][0] if cut[1] else cut[0]).in_features)
    probe, summary = P.fit_probe(X, np.asarray(p.data.splits[train]["labels"]), False, P.ProbeOptions(cv=2))
    assert summary["C"] in P.ProbeOptions().Cs and summary["cv_folds"] == 2
    P.write_probe(p.model, p.cut, *P.probe_affine(probe, len(p.data.labels)))
    Xe = F.extract(p.model, p.cut, p.encoded[evals], p.collate, batch_size=4)  # the projector bypass is undone afterwards
    np.testing.assert_allclose(p.probabilities(evals), probe.predict_proba(Xe), atol=1e-5, rtol=0)
    assert not p.model.training


def test_feature_cache_hits_and_its_key_follows_base_data_and_preprocessing(inputs, tmp_path):
    p = Prepared(raw_recipe("text", inputs, tmp_path / "run"))
    rows, key = p.encoded["train"], p.key("train")
    first, hit1 = F.cached_features(p.model, p.cut, rows, p.collate, key, tmp_path / "cache", batch_size=8)
    second, hit2 = F.cached_features(None, p.cut, rows, p.collate, key, tmp_path / "cache")  # no model needed on a hit
    assert (hit1, hit2) == (False, True)
    np.testing.assert_array_equal(first, second)
    assert (tmp_path / "cache" / key.digest() / F.META).is_file()

    fewer = raw_recipe("text", inputs, tmp_path / "run")
    fewer["data"]["max_train_samples"] = 30
    assert Prepared(fewer).key("train").data != key.data  # other rows
    assert p.key("validation").data != key.data
    longer = raw_recipe("text", inputs, tmp_path / "run")
    longer["data"]["max_length"] = 16
    assert Prepared(longer).key("train").preprocessing != key.preprocessing  # other encoding
    other = raw_recipe("text", inputs, tmp_path / "run")
    other["model"]["name_or_path"] = str(write_tiny_bert(tmp_path / "other-bert", seed=1))
    changed = Prepared(other).key("train")
    assert changed.base != key.base and changed.data == key.data  # other weights, same data
    assert Prepared(raw_recipe("text", inputs, tmp_path / "run")).key("train") == key  # rebuilt: the same key


def test_cached_features_of_the_wrong_size_are_refused(tmp_path):
    key = F.FeatureKey("b", "c", "p", "d")
    F.store_features(tmp_path / key.digest(), np.ones((3, 2), np.float32), key)
    np.testing.assert_array_equal(F.load_features(tmp_path / key.digest(), 3), np.ones((3, 2)))
    with pytest.raises(RunError, match="cached features have 3 rows, the split has 4"):
        F.load_features(tmp_path / key.digest(), 4)


def test_cache_root_follows_override_then_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(F.CACHE_ENV, str(tmp_path / "env"))
    assert F.cache_root() == tmp_path / "env" / "features"
    assert F.cache_root(str(tmp_path / "recipe")) == tmp_path / "recipe"
    monkeypatch.delenv(F.CACHE_ENV)
    assert F.cache_root() == Path.home() / ".cache" / "sft_hub" / "features"


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.mark.parametrize("classes,outputs,standardize", [(2, 2, True), (2, 2, False), (3, 3, True), ((0, 2), 3, True), ((0, 1, 3), 4, True)])
def test_probe_affine_is_predict_proba(classes, outputs, standardize):
    rng = np.random.default_rng(0)
    present = list(range(classes)) if isinstance(classes, int) else list(classes)
    X = rng.normal(size=(90, 5)) * [1, 3, 0.5, 1, 2] + 2
    y = np.asarray(present)[np.argmax(X[:, :len(present)] + rng.normal(size=(90, len(present))), 1)]
    probe, _ = P.fit_probe(X, y, False, P.ProbeOptions(Cs=[0.1, 1.0], cv=3, standardize=standardize))
    W, b = P.probe_affine(probe, outputs)
    probs = _softmax(X @ W.T + b)
    np.testing.assert_allclose(probs[:, present], probe.predict_proba(X), atol=1e-10)
    assert np.all(probs[:, [c for c in range(outputs) if c not in present]] == 0)


def test_ridge_probe_for_regression():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(60, 4))
    y = X @ [1.0, -2.0, 0.5, 0.0] + 3
    probe, summary = P.fit_probe(X, y, True, P.ProbeOptions())
    W, b = P.probe_affine(probe, 1)
    np.testing.assert_allclose(X @ W.T[:, 0] + b, probe.predict(X), atol=1e-10)
    assert summary["estimator"] == "RidgeCV" and summary["alpha"] in P.ProbeOptions().alphas


def test_fusing_needs_a_wide_enough_projector():
    model = torch.nn.Sequential()
    model.add_module("projector", torch.nn.Linear(4, 2))
    model.add_module("classifier", torch.nn.Linear(2, 3))
    with pytest.raises(RunError, match="projector has 2 outputs, fewer than the 3 classes"):
        P.write_probe(model, F.Cut("classifier", ("projector",)), np.zeros((3, 4)), np.zeros(3))
    with pytest.raises(RunError, match="no nn.Linear with 5 outputs"):
        model.config = type("C", (), {"num_labels": 5})()
        F.find_cut(model, ["projector", "classifier"])
