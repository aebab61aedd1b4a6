"""`linear_probe`: the frozen base runs once in eval mode; scikit-learn fits the head on its pooled features.

The first seed's procedure as one ordinary run. `fit` (called by the engine instead of `Trainer.train`,
since `needs_training_loop` is False) takes the training split's pooled features from the feature cache
(`sft_hub.features`: extracted once per base, cut point, preprocessing and data, then reused), fits
`LogisticRegressionCV` (C by stratified k-fold cross-validation on train; `RidgeCV` for regression;
optional balanced class weights) and writes it exactly into the model's own classifier (`probe_fit`).
It then checks, on a few training rows, that the model's softmax equals scikit-learn's `predict_proba`.
The head is saved like `head`'s (`<run>/head/head.safetensors`), so eval, predict, export --merge and push
treat the run like any other. Under `accelerate launch` every rank extracts its shard, rank 0 fits, and
the weights are broadcast.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from sft_hub import features as feats
from sft_hub.errors import ConfigError, RunError
from sft_hub.probe_fit import ProbeOptions, fit_probe, probe_affine, write_probe
from sft_hub.strategies import register
from sft_hub.strategies.base import FitInputs
from sft_hub.strategies.head import HeadWeights

log = logging.getLogger("sft_hub")
CHECK_ROWS = 16  # training rows run through the whole model after fitting, against predict_proba
TOLERANCE = 1e-4  # on probabilities (the tests hold it to 1e-5); larger means a nonlinear layer between cut and logits


@register
class LinearProbe(HeadWeights):
    @dataclass
    class Config:
        Cs: int | list[float] = field(default_factory=lambda: list(ProbeOptions().Cs))  # C grid (int: that many on 1e-4..1e4)
        cv: int = 5  # stratified folds for choosing C
        class_weight: str | None = None  # null or "balanced"
        max_iter: int = 1000
        standardize: bool = True  # z-score features before fitting (folded into the written weights)
        alphas: list[float] = field(default_factory=lambda: list(ProbeOptions().alphas))  # RidgeCV grid, regression only
        batch_size: int | None = None  # extraction batch size; default training.per_device_eval_batch_size
        cache_dir: str | None = None  # feature cache; default $SFT_HUB_CACHE/features or ~/.cache/sft_hub/features

        def validate(self, where: str) -> None:
            grid = [self.Cs] if isinstance(self.Cs, int) else self.Cs
            if not grid or any(c <= 0 for c in grid):
                raise ConfigError(f"{where}.Cs: positive values (or a positive count), got {self.Cs!r}")
            if self.cv < 2:
                raise ConfigError(f"{where}.cv: at least 2 folds, got {self.cv}")
            if self.class_weight not in (None, "balanced"):
                raise ConfigError(f"{where}.class_weight: null or 'balanced', got {self.class_weight!r}")
            if self.max_iter < 1 or (self.batch_size is not None and self.batch_size < 1):
                raise ConfigError(f"{where}.{'max_iter' if self.max_iter < 1 else 'batch_size'}: must be >= 1")
            if not self.alphas or any(a <= 0 for a in self.alphas):
                raise ConfigError(f"{where}.alphas: positive values, got {self.alphas!r}")

    name: ClassVar[str] = "linear_probe"
    saved_as: ClassVar[str] = "head"  # only the head's weights (the fitted classifier, a fused projector) are saved
    merges: ClassVar[bool] = True  # the head goes back into the model's own classifier
    needs_training_loop: ClassVar[bool] = False  # the engine calls `fit` instead of Trainer.train

    def fit(self, model: nn.Module, inputs: FitInputs) -> dict[str, Any]:
        """Features (cached) -> scikit-learn -> the classifier's weights; returns the run's train metrics."""
        from accelerate import PartialState
        from accelerate.utils import broadcast_object_list

        start = time.perf_counter()
        state, data, recipe, args = PartialState(), inputs.data, inputs.recipe, inputs.args
        head = inputs.info.head
        cut = feats.find_cut(model, head)
        rows = inputs.encoded[data.train_split]
        key = feats.FeatureKey(feats.base_fingerprint(model, head), cut.describe(),
                               feats.preprocessing_fingerprint(inputs.task, inputs.processor, recipe.data, recipe.task),
                               feats.data_fingerprint(data.splits[data.train_split]))
        X, hit = feats.cached_features(model, cut, rows, inputs.collate, key, feats.cache_root(self.config.cache_dir),
                                       self.config.batch_size or args.per_device_eval_batch_size,
                                       data.train_split, args.dataloader_num_workers)
        extracted = time.perf_counter()
        result: list[Any] = [None]
        if state.is_main_process:
            y = np.asarray(data.splits[data.train_split]["labels"])
            probe, summary = fit_probe(X, y, data.is_regression, self._options(args.seed))
            outputs = 1 if data.is_regression else len(data.labels)
            result = [(*probe_affine(probe, outputs), summary)]
        if state.num_processes > 1:
            broadcast_object_list(result)
        W, b, summary = result[0]
        write_probe(model, cut, W, b)
        fitted = time.perf_counter()
        if state.is_main_process:
            self._check(model, inputs, probe, X, data.is_regression)
        log.warning("linear_probe: %s on %d x %d features (%s), %s", summary["estimator"], len(rows), W.shape[1],
                    "cached" if hit else "extracted", ", ".join(f"{k}={v:.4g}" for k, v in summary.items() if isinstance(v, float)))
        runtime = time.perf_counter() - start
        return {"train_runtime": round(runtime, 3), "train_samples_per_second": round(len(rows) / max(runtime, 1e-9), 3),
                "features_seconds": round(extracted - start, 3),
                "fit_seconds": round(fitted - extracted, 3), "features_cache": "hit" if hit else "extracted",
                "features_key": key.digest(), "features_dim": int(W.shape[1]), "cut": cut.describe(),
                **{f"probe_{k}": v for k, v in summary.items()}}

    def _options(self, seed: int) -> ProbeOptions:
        c = self.config
        return ProbeOptions(Cs=c.Cs, cv=c.cv, class_weight=c.class_weight, max_iter=c.max_iter, standardize=c.standardize,
                            alphas=list(c.alphas), seed=seed)

    @torch.no_grad()
    def _check(self, model: nn.Module, inputs: FitInputs, probe: Any, X: np.ndarray, regression: bool) -> None:
        """The whole model on a few training rows must reproduce scikit-learn on their cached features."""
        n = min(CHECK_ROWS, len(X))
        rows = inputs.encoded[inputs.data.train_split]
        batch = inputs.collate([rows[i] for i in range(n)])
        batch.pop("labels", None)
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu().numpy()
        finally:
            model.train(was_training)
        got = logits.reshape(-1) if regression else torch.softmax(torch.from_numpy(logits), -1).numpy()
        want = probe.predict(X[:n]) if regression else probe.predict_proba(X[:n])
        if not regression and got.shape[1] != want.shape[1]:  # classes absent from train: compare the present ones
            got = got[:, probe[-1].classes_]
        diff = float(np.max(np.abs(got - want))) if n else 0.0
        if diff > TOLERANCE:
            raise RunError(f"linear_probe: the model with the fitted head differs from scikit-learn by {diff:.2e} on training rows; "
                           f"the layers between {feats.find_cut(model, inputs.info.head).describe()} and the logits are not "
                           "affine, or the feature cache is stale (delete it)")
        log.warning("linear_probe: model probabilities match scikit-learn on %d training rows (max |diff| %.1e)", n, diff)
