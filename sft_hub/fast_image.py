"""Inference copies of convolutional models: what `fast_predict` runs image (and any CNN) batches through.

- The copy is made in memory from the loaded (merged) model and never saved; the run, its files and the
  loaded model stay as they were (export and `merge=False` callers see the plain model).
- BatchNorm is folded into the convolution that feeds it (`fuse_conv_bn_eval`: one conv with scaled
  weights and a bias instead of conv + normalisation), and weights and batches are NHWC
  (`channels_last`), which oneDNN's convolution kernels run fastest. Pairs are found by fx-tracing the
  outermost traceable modules (timm's own untraceable layers are leaves), and the modules are replaced
  in place, so the model keeps its class and methods (`TimmWrapper` calls `forward_features` and
  `forward_head`). timm's `BatchNormAct2d` keeps its activation. Folding changes logits by float rounding
  only (~1e-7).
- Several adapters on one base (`--adapter`): the active adapter is merged into a temporary copy for one
  call; the shared model and the other adapters are untouched.
- Safety net: the first row of the first batch also runs through the plain model; a copy off by more
  than `TOLERANCE` (`TF32_TOLERANCE` for TF32 convolutions on CUDA) is dropped (logged) and every batch
  runs on the plain model. So does a model the copy cannot be made of (the reason is logged).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections import Counter
from typing import Any

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

log = logging.getLogger("sft_hub")
MIN_CONVS = 2  # a ViT has one (its patch embedding): no BatchNorm, nothing to gain from a copy
TOLERANCE = 1e-4  # max |logit difference| (and relative) accepted between the copy and the plain model
# CUDA convolutions round their inputs to TF32 by default (10-bit mantissa, ~1e-3): the plain model itself is
# no closer than that to exact float32, so the check there allows TF32's error (not measured on a GPU yet)
TF32_TOLERANCE = 1e-2


def tolerance(logits: torch.Tensor) -> float:
    return TF32_TOLERANCE if logits.is_cuda and torch.backends.cudnn.allow_tf32 else TOLERANCE


def is_cnn(model: nn.Module) -> bool:
    return sum(isinstance(m, nn.Conv2d) for m in model.modules()) >= MIN_CONVS


def _timm_norm_act() -> tuple[type, ...]:
    try:
        from timm.layers import BatchNormAct2d
    except ImportError:  # timm is a dependency of the image task only
        return ()
    return (BatchNormAct2d,)


def _tracer() -> fx.Tracer:
    """A tracer that does not step into layers timm marks untraceable (they stay single modules)."""
    try:
        from timm.layers._fx import get_notrace_functions, get_notrace_modules
        leaves, wrapped = tuple(get_notrace_modules()), tuple(f for f in get_notrace_functions() if callable(f))
    except ImportError:
        leaves, wrapped = (), ()

    class Tracer(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return type(m) in leaves or super().is_leaf_module(m, qualname)

    return Tracer(autowrap_functions=wrapped)


def _is_bn(module: nn.Module) -> bool:
    return type(module) is nn.BatchNorm2d or type(module) in _timm_norm_act()


def conv_bn_pairs(module: nn.Module, prefix: str = "") -> list[tuple[str, str]]:
    """(conv, batchnorm) module names where the BatchNorm reads only that conv's output, each called once."""
    try:
        graph = _tracer().trace(module)
    except Exception:  # data-dependent control flow, **kwargs forwards...: look inside instead
        return [p for name, child in module.named_children() for p in conv_bn_pairs(child, f"{prefix}{name}.")]
    modules = dict(module.named_modules())
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not _is_bn(modules[node.target]) or len(node.args) != 1 or node.kwargs:
            continue
        src = node.args[0]
        if isinstance(src, fx.Node) and src.op == "call_module" and type(modules[src.target]) is nn.Conv2d \
                and len(src.users) == 1 and calls[src.target] == 1 and calls[node.target] == 1:
            pairs.append((prefix + src.target, prefix + node.target))
    return pairs


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every conv -> BatchNorm pair of an eval-mode model in place; the number folded."""
    folded = 0
    for conv_name, bn_name in conv_bn_pairs(model):
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        if bn.training or conv.training or not bn.track_running_stats or bn.running_mean is None:
            continue
        model.set_submodule(conv_name, fuse_conv_bn_eval(conv, bn))
        # timm's BatchNormAct2d also applies its dropout and activation: they stay
        model.set_submodule(bn_name, nn.Identity() if type(bn) is nn.BatchNorm2d else nn.Sequential(bn.drop, bn.act))
        folded += 1
    return folded


def inference_copy(model: nn.Module, adapter: str | None = None) -> nn.Module | None:
    """An eval-mode copy with BatchNorm folded and NHWC weights; None (logged) where none can be made.

    `adapter`: the model is a PeftModel with several adapters; the copy merges only this one.
    """
    try:
        with torch.no_grad():
            fast = copy.deepcopy(model)
            if adapter is not None:
                fast.set_adapter(adapter)
                fast = fast.merge_and_unload(adapter_names=[adapter])
            fast.eval()
            folded = fold_batchnorm(fast)
            fast.to(memory_format=torch.channels_last)
    except Exception as exc:  # anything the copy cannot do, the plain model still can
        log.warning("fast image inference: using the plain model (%s: %s)", type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        return None
    log.info("fast image inference: %d BatchNorm layers folded into their convolutions, channels_last", folded)
    return fast


def _nhwc(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 and v.is_floating_point() else v for k, v in batch.items()}


class Runner:
    """batch -> logits, on the fast copy when there is one; its first row is checked against the plain model once."""

    def __init__(self, plain: nn.Module, fast: nn.Module | None):
        self.plain, self.fast, self.checked = plain, fast, False

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.fast is None:
            return self.plain(**batch).logits
        out = self.fast(**_nhwc(batch)).logits
        if not self.checked:
            self.checked = True
            ref = self.plain(**{k: v[:1] for k, v in batch.items()}).logits
            diff = float((out[:1].float() - ref.float()).abs().max())
            tol = tolerance(ref)
            if not torch.allclose(out[:1].float(), ref.float(), rtol=tol, atol=tol):
                log.warning("fast image inference: the copy's logits differ by %.2g from the plain model's; using the plain model", diff)
                self.fast = None
                return self.plain(**batch).logits
        return out


def runner(loaded: Any, model: nn.Module, fast: bool = True) -> Runner:
    """The runner for this loaded run's (merged) model; a single run keeps its runner (copy and check) for later calls."""
    if not fast or not is_cnn(model):
        return Runner(model, None)
    if hasattr(loaded, "activate"):  # several adapters share `model`: a copy of the active one for this call only
        adapter = getattr(loaded, "adapter_name", None) or getattr(model, "active_adapter", None)
        return Runner(model, inference_copy(model, adapter=adapter) if isinstance(adapter, str) else None)
    cached = getattr(loaded, "_fast_image", None)
    if cached is None or cached[0] is not model:  # the runner is kept, so its check runs once and a failed copy stays dropped
        cached = (model, Runner(model, inference_copy(model)))
        loaded._fast_image = cached
    return cached[1]


def processor(processor: Any, run: Runner) -> Any:
    """The image processor with NHWC batches when the copy runs (the collator lays them out once)."""
    if run.fast is not None and dataclasses.is_dataclass(processor) and hasattr(processor, "channels_last"):
        return dataclasses.replace(processor, channels_last=True)
    return processor
