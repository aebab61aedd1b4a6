"""Launch target for the multi-process tests: `accelerate launch ... -m sft_target train RECIPE`.

It is sft-hub's own CLI with two test-only additions:

- FSDP on CPU. accelerate 1.15 turns a launch into FSDP only for accelerator devices (`AcceleratorState`
  picks FSDP inside its MULTI_GPU/XPU/... branch); on CPU processes it silently runs DDP while
  transformers still loads ranks > 0 on `meta` (RAM-efficient loading). torch's FSDP2 (`fully_shard`)
  runs on CPU with gloo, so a MULTI_CPU state that was handed an FSDP plugin is promoted to FSDP here,
  and the tests exercise the real FSDP2 paths (meta loading + broadcast from rank 0, DTensor shards,
  gathered saves, sharded checkpoints) on CPU. Nothing in sft_hub depends on it.
- Faults, from `SFT_HUB_FAULT=kill_after_complete:N`: right after global rank 0 marks checkpoint-N
  complete, SIGKILL its launcher and every rank that launcher started (each rank runs in its own
  process group, so this walks /proc), as a machine that loses power.
  `SFT_HUB_FAULT=pause_at_step:N:FILE`: global rank 0 creates FILE at the end of step N and waits there
  until a SIGTERM reaches it (the test sends one, as SLURM would on preemption), so the signal lands
  mid-run at a known step whatever the machine's speed.
"""

from __future__ import annotations

import os
import signal
import sys

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

from sft_hub import runs

_original_init = AcceleratorState.__init__


def _init(self, *args, fsdp_plugin=None, deepspeed_plugin=None, **kwargs):
    _original_init(self, *args, fsdp_plugin=fsdp_plugin, deepspeed_plugin=deepspeed_plugin, **kwargs)
    if self.distributed_type != DistributedType.MULTI_CPU:
        return
    if fsdp_plugin is not None:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin
    elif deepspeed_plugin is not None:  # as AcceleratorState does for GPUs (DeepSpeed runs its ZeRO stages on gloo)
        self.distributed_type = DistributedType.DEEPSPEED
        deepspeed_plugin.set_mixed_precision(self._mixed_precision)
        deepspeed_plugin.select(_from_accelerator_state=True)
        self.deepspeed_plugins = deepspeed_plugin
        self._mixed_precision = "no"
    else:
        return
    PartialState._shared_state["distributed_type"] = self.distributed_type


AcceleratorState.__init__ = _init

_fault = os.environ.get("SFT_HUB_FAULT", "")


def _kill_job() -> None:
    launcher, me = os.getppid(), os.getpid()
    siblings = []
    for entry in os.listdir("/proc"):
        try:
            stat = open(f"/proc/{entry}/stat").read()
        except (OSError, ValueError):
            continue
        if entry.isdigit() and int(stat.rsplit(")", 1)[1].split()[1]) == launcher and int(entry) != me:
            siblings.append(int(entry))
    for pid in [*siblings, launcher, me]:
        os.kill(pid, signal.SIGKILL)


if _fault.startswith("kill_after_complete:"):
    _step = int(_fault.split(":")[1])
    _mark = runs.mark_complete

    def _mark_then_die(path):
        _mark(path)
        if path.name == f"checkpoint-{_step}":
            _kill_job()

    runs.mark_complete = _mark_then_die

if _fault.startswith("pause_at_step:"):
    import time
    from pathlib import Path

    from sft_hub import callbacks

    _, _at, _file = _fault.split(":", 2)
    _on_step_end = callbacks.GracefulStop.on_step_end

    def _pause_then_stop(self, args, state, control, **kwargs):
        if state.global_step == int(_at) and state.is_world_process_zero:
            Path(_file).touch()
            deadline = time.monotonic() + 300
            while not self.requested and time.monotonic() < deadline:
                time.sleep(0.05)
        return _on_step_end(self, args, state, control, **kwargs)

    callbacks.GracefulStop.on_step_end = _pause_then_stop

if __name__ == "__main__":
    from sft_hub.cli import main

    main(sys.argv[1:])
