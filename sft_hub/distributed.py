"""Reading a model's tensors safely under every way accelerate may hold them, and agreeing across ranks.

A parameter can be, depending on the launch:
- a plain tensor (one process, DDP);
- on the `meta` device: with FSDP's `cpu_ram_efficient_loading` transformers loads the weights on
  local rank 0 only and leaves the other ranks' copies on `meta` until FSDP broadcasts rank 0's
  weights inside `accelerator.prepare` (so no rank > 0 may read its base before training starts);
- a `DTensor` shard (FSDP2 after prepare): `full_tensor()` all-gathers it;
- a DeepSpeed ZeRO-3 partition (`ds_id` attribute, `numel() == 0` locally): gathered with
  `deepspeed.zero.GatheredParameters`.
Gathering is a collective: every rank must call `full_tensors` / `fingerprint` at the same point with
the same names, which is why both iterate in sorted order and never skip a tensor on one rank only.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from sft_hub.base_model import tensors_sha256


def is_zero3(t: torch.Tensor) -> bool:
    return hasattr(t, "ds_id")


def is_dtensor(t: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch without distributed support
        return False
    return isinstance(t, DTensor)


def materialised(named: Iterable[tuple[str, torch.Tensor]]) -> bool:
    """False when any tensor is on `meta` (this rank waits for FSDP to broadcast rank 0's weights)."""
    return not any(t.is_meta for _, t in named)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A full, detached CPU copy of `t` however it is sharded (a collective for DTensor and ZeRO-3).

    Always a copy: FSDP2 frees and re-allocates the storage of unsharded parameters, and a storage that
    was ever exposed to numpy (hashing does that) can no longer be resized ("Trying to resize storage
    that is not resizable" at the next save).
    """
    if is_zero3(t):
        import deepspeed

        with deepspeed.zero.GatheredParameters([t], modifier_rank=None):
            return t.detach().to("cpu", copy=True)
    if is_dtensor(t):
        return t.detach().full_tensor().to("cpu", copy=True)
    if t.is_meta:
        raise RuntimeError("cannot read a tensor on the meta device (its weights live on another rank)")
    return t.detach().to("cpu", copy=True)


def full_tensors(named: Iterable[tuple[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """{name: full CPU copy}, gathered in sorted name order (identical on every rank)."""
    return {name: full_tensor(t).contiguous() for name, t in sorted(named, key=lambda kv: kv[0])}


def numel(t: torch.Tensor) -> int:
    """Number of elements of the whole parameter (ZeRO-3 partitions report 0 locally)."""
    return int(getattr(t, "ds_numel", t.numel()))


def fingerprint(named: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """sha256 over names, dtypes, shapes and bytes of the full tensors; None on a rank holding `meta` copies.

    The same digest as `base_model.tensors_sha256`, computed one gathered copy at a time (a sharded
    base is never whole in memory). On a rank whose tensors are on `meta` nothing is gathered, which is
    safe because `meta` copies only exist before `accelerator.prepare`, when nothing is sharded yet.
    """
    named = list(named)
    return tensors_sha256(named, read=lambda t: full_tensor(t).contiguous()) if materialised(named) else None


def world_size() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_available() and torch.distributed.is_initialized() else 1


def from_main(value: Any) -> Any:
    """Rank 0's `value` on every rank (a no-op in one process)."""
    if world_size() == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if world_size() > 1:
        torch.distributed.barrier()


def prepare_fsdp(accelerator: Any, model: torch.nn.Module) -> None:
    """Work around two accelerate 1.15 FSDP2 faults before the Trainer prepares `model` (no-op without FSDP)."""
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if plugin is None:
        return
    if plugin.cpu_ram_efficient_loading and not any_rank(any(p.is_meta for p in model.parameters()), accelerator.device):
        # Every rank already holds the same weights (a base built from its config with the run's seed, or one
        # loaded by every rank), so there is nothing to broadcast; and accelerate 1.15's broadcast
        # (`fsdp2_load_full_state_dict`) fails on buffers such as BatchNorm's: "'Tensor' object has no
        # attribute 'device_mesh'".
        plugin.cpu_ram_efficient_loading = False
    _give_meta_params_storage(model)
    _wrap_blocks_without_embeddings(accelerator, model)


def _give_meta_params_storage(model: torch.nn.Module) -> None:
    """Give every `meta` parameter (ranks > 0 under `cpu_ram_efficient_loading`) its own empty CPU storage.

    accelerate maps the optimizer's parameters to their FSDP2 shards by `data_ptr()`; on a rank whose
    parameters are all on `meta` every pointer is 0, so the optimizer of every rank but 0 ends up updating
    one parameter shard many times and the others never: training silently diverges from DDP (on GPUs
    too). `torch.empty` memory is never touched (the pages are not committed) and accelerate moves the
    model back to `meta` before broadcasting rank 0's weights, so the memory saving is kept.
    """
    replaced: dict[int, torch.nn.Parameter] = {}
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is not None and param.is_meta:
                if id(param) not in replaced:  # tied weights stay tied
                    replaced[id(param)] = torch.nn.Parameter(torch.empty_like(param, device="cpu"), requires_grad=param.requires_grad)
                module._parameters[name] = replaced[id(param)]


def _wrap_blocks_without_embeddings(accelerator: Any, model: torch.nn.Module) -> None:
    """Choose the blocks accelerate's FSDP2 auto-wrap shards, when the user names none.

    accelerate 1.15 (`fsdp2_prepare_model`) wraps every `_no_split_modules` block, then gives the input
    embeddings a unit of their own. Two faults follow, on GPUs as on CPU:
    - models that list their embeddings block there (BERT, ViT, AST: `BertEmbeddings`, ...) have the
      word embeddings sharded twice: "TypeError: Invariant encountered: value was None when it should
      not be" (DeviceMesh._concatenate). Such blocks are left out; the embeddings get accelerate's unit.
    - `TimmWrapperForImageClassification` lists `TimmWrapperModel`, which it does not contain: "Could not
      find the transformer layer class TimmWrapperModel in the model". Then the model's repeated blocks
      (the classes stacked in its Sequential / ModuleList stages: a ResNet's `BasicBlock` / `Bottleneck`)
      are wrapped instead.
    With `fsdp_transformer_layer_cls_to_wrap` set, or another policy, nothing is changed.
    """
    plugin = accelerator.state.fsdp_plugin
    if getattr(plugin, "fsdp_version", 1) != 2 or plugin.transformer_cls_names_to_wrap is not None:
        return
    policy = getattr(plugin.auto_wrap_policy, "func", plugin.auto_wrap_policy)
    if getattr(policy, "__name__", "") != "transformer_auto_wrap_policy":
        return
    present = {type(m).__name__ for m in model.modules()}
    blocks = [b for b in getattr(model, "_no_split_modules", None) or [] if b in present] or _repeated_blocks(model)
    try:
        embeddings = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        embeddings = None
    if embeddings is not None:
        blocks = [b for b in blocks if not any(type(m).__name__ == b and any(s is embeddings for s in m.modules()) for m in model.modules())]
    plugin.transformer_cls_names_to_wrap = blocks


def _repeated_blocks(model: torch.nn.Module) -> list[str]:
    """Class names of the non-leaf modules stacked (two or more) in the model's Sequential / ModuleList stages."""
    counts: dict[str, int] = {}
    for container in model.modules():
        if isinstance(container, (torch.nn.Sequential, torch.nn.ModuleList)):
            for child in container.children():
                if any(True for _ in child.children()) and any(True for _ in child.parameters()):
                    counts[type(child).__name__] = counts.get(type(child).__name__, 0) + 1
    return sorted(name for name, n in counts.items() if n >= 2)


def gathered_state(trainer: Any) -> dict[str, torch.Tensor] | None:
    """The whole model state dict (on rank 0) when FSDP or DeepSpeed shard it, else None (read the model itself).

    A collective: every rank calls it. accelerate gathers FSDP2 shards as a full state dict whatever
    `fsdp_state_dict_type` the checkpoints use (SHARDED_STATE_DICT stays fast for them), and ZeRO-3
    partitions through `stage3_gather_16bit_weights_on_model_save` (`zero3_save_16bit_model` in the config).
    """
    if not (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled):
        return None
    return trainer.accelerator.get_state_dict(trainer.model_wrapped if trainer.is_deepspeed_enabled else trainer.model)


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's own elements of `t`: its DTensor shard, its ZeRO-3 partition, or `t` itself."""
    if is_zero3(t):
        return t.ds_tensor
    if is_dtensor(t):
        return t.to_local()
    return t


def any_rank(flag: bool, device: Any = "cpu") -> bool:
    """True on every rank when `flag` is true on any rank (one tiny all-reduce; `device` as the backend needs)."""
    if world_size() == 1:
        return flag
    value = torch.tensor([1 if flag else 0], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """{"total", "trainable"} counted over whole parameters (a ZeRO-3 partition holds 0 elements locally)."""
    params = list(model.parameters())
    return {"total": sum(numel(p) for p in params), "trainable": sum(numel(p) for p in params if p.requires_grad)}
