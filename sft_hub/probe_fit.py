"""A linear probe: scikit-learn fitted on frozen features, then written exactly into the model's own head.

`fit_probe` fits `LogisticRegressionCV` (C chosen by stratified k-fold cross-validation on the training
features, log-loss scoring) or `RidgeCV` for regression, after an optional `StandardScaler`. `probe_affine`
turns the fitted pipeline into logits `W x + b` whose softmax *is* `predict_proba` (scaler folded in;
a binary model's single coefficient row becomes the pair [-z/2, +z/2], since softmax([-z/2, z/2]) =
[1 - sigmoid(z), sigmoid(z)]; classes absent from the training rows get a -1e4 logit), and
`write_probe` puts it into the classifier Linear, fusing a bypassed projector (see `features.Cut`), so the
run is one ordinary model. scikit-learn is imported when a probe is fitted (not when the strategy registry
loads it): other runs never pay its ~40 MB of resident memory.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from sft_hub.errors import RunError
from sft_hub.features import Cut

if TYPE_CHECKING:
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import Pipeline

log = logging.getLogger("sft_hub")
ABSENT_LOGIT = -1e4  # exp(-1e4) is exactly 0 in float32: a class never seen in training gets probability 0


@dataclass
class ProbeOptions:
    Cs: int | list[float] = field(default_factory=lambda: [1e-3, 1e-2, 1e-1, 1.0, 10.0])  # int: that many on 1e-4..1e4
    cv: int = 5  # stratified folds for choosing C
    class_weight: str | None = None  # None or "balanced"
    max_iter: int = 1000
    standardize: bool = True  # z-score features first (folded into the written weights); makes one C grid fit all bases
    alphas: list[float] = field(default_factory=lambda: [0.1, 1.0, 10.0, 100.0, 1000.0])  # RidgeCV, for regression
    seed: int = 0


def fit_probe(X: np.ndarray, y: np.ndarray, regression: bool, opts: ProbeOptions) -> tuple[Pipeline, dict[str, Any]]:
    """The fitted pipeline and a summary (chosen C / alpha, cross-validation score, iterations)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV, RidgeCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    steps: list[Any] = [StandardScaler()] if opts.standardize else []
    if regression:
        model = make_pipeline(*steps, RidgeCV(alphas=opts.alphas)).fit(X, y.astype(np.float64))
        ridge = model[-1]
        return model, {"estimator": "RidgeCV", "alpha": float(ridge.alpha_), "cv": "leave-one-out (GCV)",
                       "cv_score_r2": float(ridge.best_score_) if hasattr(ridge, "best_score_") else None}
    counts = np.bincount(y.astype(np.int64))
    folds = min(opts.cv, int(counts[counts > 0].min()))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        if folds < 2:  # a class with a single example: nothing to cross-validate on
            log.warning("linear_probe: a class has one training example; fitting C=1 without cross-validation")
            clf = LogisticRegression(C=1.0, max_iter=opts.max_iter, class_weight=opts.class_weight)
        else:
            clf = LogisticRegressionCV(Cs=opts.Cs, l1_ratios=(0.0,), cv=StratifiedKFold(folds, shuffle=True, random_state=opts.seed),
                                       scoring="neg_log_loss", max_iter=opts.max_iter, class_weight=opts.class_weight,
                                       use_legacy_attributes=False)
        model = make_pipeline(*steps, clf).fit(X, y)
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        log.warning("linear_probe: lbfgs did not fully converge in max_iter=%d; raise strategy.max_iter", opts.max_iter)
    clf = model[-1]
    summary: dict[str, Any] = {"estimator": type(clf).__name__, "C": float(np.ravel(clf.C_ if hasattr(clf, "C_") else clf.C)[0]),
                               "cv_folds": folds if folds >= 2 else 0, "n_iter": int(np.max(clf.n_iter_))}
    if folds >= 2:
        summary["cv_log_loss"] = float(-np.max(np.mean(_scores(clf), axis=0)))
    return model, summary


def _scores(clf: LogisticRegressionCV) -> np.ndarray:
    """Cross-validation scores as [folds, Cs] whatever the attribute layout of this scikit-learn version."""
    scores = clf.scores_
    if isinstance(scores, dict):
        scores = next(iter(scores.values()))
    scores = np.asarray(scores)
    return scores.reshape(scores.shape[0], -1)


def probe_affine(pipeline: Pipeline, num_outputs: int) -> tuple[np.ndarray, np.ndarray]:
    """(W [num_outputs, dim], b [num_outputs]) in float64: softmax(W x + b) == pipeline.predict_proba(x)."""
    est = pipeline[-1]
    coef = np.atleast_2d(np.asarray(est.coef_, dtype=np.float64))
    intercept = np.atleast_1d(np.asarray(est.intercept_, dtype=np.float64))
    if len(pipeline) > 1:  # fold the scaler: w . (x - mean) / scale + b
        scaler = pipeline[0]
        coef = coef / scaler.scale_
        intercept = intercept - coef @ scaler.mean_
    if not hasattr(est, "classes_"):  # regression: one output
        return coef.reshape(1, -1), intercept.reshape(1)
    classes = np.asarray(est.classes_, dtype=np.int64)
    W = np.zeros((num_outputs, coef.shape[1]))
    b = np.full(num_outputs, ABSENT_LOGIT)
    if len(classes) == 2:  # one row z = w.x + c: logits [-z/2, +z/2]
        W[classes[0]], b[classes[0]] = -coef[0] / 2, -intercept[0] / 2
        W[classes[1]], b[classes[1]] = coef[0] / 2, intercept[0] / 2
    else:
        W[classes], b[classes] = coef, intercept
    return W, b


@torch.no_grad()
def write_probe(model: nn.Module, cut: Cut, W: np.ndarray, b: np.ndarray) -> None:
    """Write W, b into the classifier; with a bypassed projector P, write P := [W; 0] and classifier := [I 0]."""
    classifier = model.get_submodule(cut.classifier)
    outputs = W.shape[0]
    if len(cut.bypass) > 1:
        raise RunError(f"linear_probe: cannot fuse more than one projector ({', '.join(cut.bypass)}) before {cut.classifier}")
    if not cut.bypass:
        _set_linear(classifier, W, b, cut.classifier)
        return
    proj = model.get_submodule(cut.bypass[0])
    width = proj.out_features
    if width < outputs:
        raise RunError(f"linear_probe: {cut.bypass[0]} has {width} outputs, fewer than the {outputs} classes; cannot fuse the probe")
    Wp, bp = np.zeros((width, W.shape[1])), np.zeros(width)
    Wp[:outputs], bp[:outputs] = W, b
    _set_linear(proj, Wp, bp, cut.bypass[0])
    Wc = np.zeros((outputs, width))
    Wc[:, :outputs] = np.eye(outputs)
    _set_linear(classifier, Wc, np.zeros(outputs), cut.classifier)


def _set_linear(layer: nn.Linear, W: np.ndarray, b: np.ndarray, name: str) -> None:
    if tuple(layer.weight.shape) != W.shape:
        raise RunError(f"linear_probe: {name} has weight shape {tuple(layer.weight.shape)}, the probe {W.shape}")
    layer.weight.copy_(torch.from_numpy(W).to(layer.weight.dtype))
    if layer.bias is not None:
        layer.bias.copy_(torch.from_numpy(b).to(layer.bias.dtype))
    elif np.any(b):
        raise RunError(f"linear_probe: {name} has no bias; cannot hold the probe's intercept")
