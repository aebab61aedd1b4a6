"""Launch target `python -m fsdp_on_cpu train RECIPE`: sft-hub's CLI with accelerate's FSDP allowed on CPU.

accelerate 1.15 only turns a launch into FSDP for accelerator devices (`AcceleratorState` picks FSDP
inside its MULTI_GPU/XPU/... branch); on CPU processes it silently runs DDP while transformers still
loads ranks > 0 on `meta` (RAM-efficient loading), which is the failure issue 15 reports. torch's FSDP2
(`fully_shard`) itself runs on CPU with gloo, so this shim promotes a MULTI_CPU state that was handed an
FSDP plugin to FSDP, and the tests exercise the real FSDP2 paths (meta loading + broadcast from rank 0,
DTensor shards, gathered saves, sharded checkpoints) on CPU. Nothing in sft_hub depends on it.
"""

from __future__ import annotations

import sys

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

_original_init = AcceleratorState.__init__


def _init(self, *args, fsdp_plugin=None, **kwargs):
    _original_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP


AcceleratorState.__init__ = _init

if __name__ == "__main__":
    from sft_hub.cli import main

    main(sys.argv[1:])
