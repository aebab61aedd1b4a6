"""Launch target for the multi-process tests: `accelerate launch ... -m sft_target train RECIPE`.

It is sft-hub's own CLI (which runs FSDP / DeepSpeed launches on CPU processes as such, see
sft_hub/cpu_sharding.py) with test-only faults:

- `SFT_HUB_FAULT=kill_after_complete:N`: right after global rank 0 marks checkpoint-N
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

from sft_hub import runs

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
