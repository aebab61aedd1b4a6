"""Peak memory of one training run, for the manifest (`resources`) and `sft-hub compare`.

Peak RSS is the process's high-water mark (VmHWM). `sft-hub select` trains many candidates in one process,
so the mark is reset when a run starts (Linux: writing 5 to /proc/self/clear_refs); where that is not
possible the value is the process's lifetime peak and `rss_scope` says so. CUDA peak memory is reset and read
through torch. Each rank measures itself; the manifest (written by rank 0) holds rank 0's numbers.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path
from typing import Any

import torch

STATUS, CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def _vm_hwm() -> int | None:
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class PeakMemory:
    """Call `start()` before training and `result()` after it."""

    def __init__(self) -> None:
        self.scope = "process"

    def start(self) -> PeakMemory:
        try:
            CLEAR_REFS.write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
            self.scope = "run"
        except OSError:
            self.scope = "process"
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        return self

    def result(self) -> dict[str, Any]:
        rss = _vm_hwm() if self.scope == "run" else None
        if rss is None:  # ru_maxrss: KiB on Linux, bytes on macOS
            maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            rss, self.scope = maxrss if sys.platform == "darwin" else maxrss * 1024, "process"
        out: dict[str, Any] = {"peak_rss_bytes": rss, "rss_scope": self.scope}
        if torch.cuda.is_available():
            out["cuda_max_memory_bytes"] = int(torch.cuda.max_memory_allocated())
        return out
