"""FSDP and DeepSpeed launches on CPU processes: run them as asked instead of silently as DDP.

accelerate 1.15 picks FSDP (and DeepSpeed) only inside its accelerator branches of `AcceleratorState`
(MULTI_GPU, MULTI_XPU, ...). A launch on CPU processes (`ACCELERATE_USE_CPU=1 accelerate launch
--config_file accelerate_configs/fsdp.yaml ...`) therefore becomes MULTI_CPU (DDP), while transformers
still loads the base on `meta` on every rank but local rank 0 (`fsdp_cpu_ram_efficient_loading`): the
Trainer then fails on rank 1 moving the model ("Cannot copy out of meta tensor"), and without
RAM-efficient loading the run would quietly be DDP. torch's FSDP2 (`fully_shard`) and DeepSpeed's ZeRO
stages do run on CPU with gloo, so a MULTI_CPU state that was handed an FSDP or DeepSpeed plugin is
promoted to that type here, exactly as accelerate does it for GPUs. Nothing changes for GPU launches,
single-process runs or plain DDP. `tests/scale` runs these paths against DDP.
"""

from __future__ import annotations

import logging

log = logging.getLogger("sft_hub")
_installed = False


def install() -> None:
    """Patch `AcceleratorState.__init__` once (before the Trainer creates its Accelerator)."""
    global _installed
    if _installed:
        return
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    original = AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, deepspeed_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, deepspeed_plugin=deepspeed_plugin, **kwargs)
        if self.distributed_type != DistributedType.MULTI_CPU:
            return
        if fsdp_plugin is not None:
            self.distributed_type = DistributedType.FSDP
            if self._mixed_precision != "no":
                fsdp_plugin.set_mixed_precision(self._mixed_precision)
            self.fsdp_plugin = fsdp_plugin
            what = f"FSDP{getattr(fsdp_plugin, 'fsdp_version', 1)}"
        elif deepspeed_plugin is not None and not isinstance(deepspeed_plugin, dict):
            self.distributed_type = DistributedType.DEEPSPEED
            deepspeed_plugin.set_mixed_precision(self._mixed_precision)
            deepspeed_plugin.select(_from_accelerator_state=True)
            self.deepspeed_plugins = deepspeed_plugin
            self._mixed_precision = "no"  # DeepSpeed handles precision itself, as accelerate sets it for GPUs
            what = f"DeepSpeed ZeRO-{deepspeed_plugin.zero_stage}"
        else:
            return
        PartialState._shared_state["distributed_type"] = self.distributed_type
        if self.is_main_process:
            log.warning("%s on %d CPU processes (gloo): accelerate enables it only on accelerators; sft-hub runs it as asked",
                        what, self.num_processes)

    AcceleratorState.__init__ = init
    _installed = True
