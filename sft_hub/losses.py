"""The engine's training loss (regression, single-label with optional class weights, multi-label BCE) and class weights.

Every loss is a *sum* over the micro-batch divided by the number of labelled items that the Trainer
counts over the whole accumulated batch (`num_items_in_batch`), so gradient accumulation is exact for
every model (heads that ignore `num_items_in_batch` included, transformers#47688):
- single-label: cross-entropy; with class weights each example's term is multiplied by its class's weight
  and the divisor stays the number of examples. torch's `reduction="mean"` divides by the sum of the
  weights in the batch instead, a divisor that depends on which classes land in which micro-batch, so
  it cannot be made exact under accumulation. `balanced` weights (N / (C * n_c)) average exactly 1 over
  the training set, so the loss keeps its unweighted scale on average.
- soft targets (mixup / cutmix): -sum(w_c * y_c * log p_c) per example, over the number of examples.
- multi-label: binary cross-entropy with logits summed over (example, label) pairs, over the number of
  pairs (what the Trainer counts for a [batch, labels] target: torch's `BCEWithLogitsLoss` mean). Class
  weights here are per-label `pos_weight`s; `balanced` is negatives / positives per label.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from sft_hub.errors import DataError

LossKind = Literal["regression", "single_label", "multi_label"]


def make_loss(kind: LossKind, class_weights: list[float] | None = None, label_smoothing: float = 0.0):
    """The `compute_loss_func` for the Trainer: sum of per-item losses over the labelled items of the accumulated batch.

    `label_smoothing` (`training.label_smoothing_factor`) mixes each single-label target with the uniform
    distribution over classes, as Trainer's own LabelSmoother does (hard labels through cross_entropy,
    soft mixup/cutmix targets by the same mixing); the engine's loss replaces Trainer's, so it is applied here.
    """
    weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None

    def loss_fn(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        logits = (outputs["logits"] if isinstance(outputs, dict) else outputs[0]).float()
        count = num_items_in_batch if num_items_in_batch is not None else labels.numel()
        w = weights.to(logits.device) if weights is not None else None
        if kind == "regression":
            total = F.mse_loss(logits.view(-1), labels.float().view(-1), reduction="sum")
        elif kind == "multi_label":
            total = F.binary_cross_entropy_with_logits(logits, labels.float().view_as(logits), pos_weight=w, reduction="sum")
        elif labels.is_floating_point() and labels.shape == logits.shape:  # soft targets (mixup / cutmix)
            target = labels.float() * (1 - label_smoothing) + label_smoothing / labels.size(-1)
            target = target * w if w is not None else target
            total = -(target * F.log_softmax(logits, dim=-1)).sum()
            count = count / labels.size(-1)  # the Trainer counts every element of a [batch, classes] label
        else:
            total = F.cross_entropy(logits.view(-1, logits.size(-1)), labels.view(-1), weight=w, reduction="sum",
                                    label_smoothing=label_smoothing)
        return total / count

    return loss_fn


def class_weights(spec: str | dict | None, labels: list[str] | None, train_labels: Any, multi_label: bool) -> list[float] | None:
    """Resolve `data.class_weights` against the training split: one weight per label (id order), or None.

    `train_labels` holds the training split's `labels` column (class ids, or multi-hot rows for multi-label).
    A mapping names labels; labels it leaves out weigh 1.0.
    """
    if spec is None:
        return None
    if labels is None:
        raise DataError("data.class_weights: only for classification (this data is regression)")
    if isinstance(spec, dict):
        names = {str(k): float(v) for k, v in spec.items()}
        unknown = [k for k in names if k not in labels]
        if unknown:
            raise DataError(f"data.class_weights.{unknown[0]}: no such label; labels are {', '.join(labels)}")
        return [names.get(label, 1.0) for label in labels]
    values = np.asarray(train_labels)
    if multi_label:  # pos_weight: negatives / positives per label (1.0 where a label is never negative)
        positives = values.sum(axis=0)
        negatives = len(values) - positives
        return [float(n / p) if n > 0 and p > 0 else 1.0 for n, p in zip(negatives, positives)]
    counts = np.bincount(values.astype(int), minlength=len(labels))
    return [float(len(values) / (len(labels) * c)) if c else 0.0 for c in counts]  # sklearn's "balanced"
