"""Small C kernels for CPU hot spots, compiled on first use with the system C compiler, with a pure-torch fallback.

`keep_mask(shape, keep_prob)` returns the boolean dropout keep-mask that
`torch.empty(shape, dtype=torch.bool).bernoulli_(keep_prob)` would draw from torch's default CPU generator,
and leaves the generator in the same state, but about 14x faster (one MiniLM LoRA step draws ~8M of them:
~18% of its time on one core). `sft_hub.lora_fast` uses it for LoRA's dropout on CPU tensors.

Same numbers or nothing: the first call compiles `keep_mask.c` (about 0.3 s; cached in
`$SFT_HUB_CACHE`/native or ~/.cache/sft_hub/native, keyed by the source, the compiler flags and the CPU),
then draws 4,099 elements both ways from the same generator state; unless masks and the generator's state
afterwards are identical (torch may draw differently on other CPUs or builds, e.g. through MKL on Intel),
or when no compiler is found, torch's own `bernoulli_` is used for the whole process. `SFT_HUB_NATIVE=0` turns
the kernels off.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import math
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("keep_mask.c")
_FLAGS = ["-O3", "-march=native", "-shared", "-fPIC"]
_STATE_WORDS = 624
# torch.get_rng_state() of the CPU generator: int64 seed, int32 left, int32 seeded, int64 next, int64 state[624], ...
_LEFT, _NEXT, _STATE = slice(8, 12), slice(16, 24), slice(24, 24 + 8 * _STATE_WORDS)
_lib: ctypes.CDLL | None = None
_checked = False


def _cpu_key() -> str:
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return f"{platform.machine()} {flags}"


def _build() -> ctypes.CDLL | None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        log.info("no C compiler found: dropout masks drawn by torch")
        return None
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join(_FLAGS).encode() + _cpu_key().encode()).hexdigest()[:16]
    root = Path(os.environ.get("SFT_HUB_CACHE") or Path.home() / ".cache" / "sft_hub") / "native"
    target = root / f"keep_mask-{key}.so"
    if not target.exists():
        root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=root)  # built aside and renamed: ranks may build at once
        os.close(fd)
        try:
            proc = subprocess.run([compiler, *_FLAGS, "-o", tmp, str(_SOURCE)], capture_output=True, text=True)
            if proc.returncode != 0:
                log.info("building %s failed (%s): dropout masks drawn by torch", _SOURCE.name, proc.stderr.strip()[:200])
                return None
            os.replace(tmp, target)
        finally:  # nothing half-built is left, whatever stopped the build
            if os.path.exists(tmp):
                os.unlink(tmp)
    lib = ctypes.CDLL(str(target))
    lib.keep_mask.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_uint64]
    lib.keep_mask.restype = None
    lib.apply_mask.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_float, ctypes.c_void_p, ctypes.c_int64]
    lib.apply_mask.restype = None
    return lib


def _native_mask(lib: ctypes.CDLL, shape: tuple[int, ...], keep_prob: float) -> torch.Tensor:
    state = torch.get_rng_state()
    raw = state.numpy()  # shares memory with `state`
    left = int(raw[_LEFT].view(np.int32)[0])
    mt = np.ascontiguousarray(raw[_STATE].view(np.uint64).astype(np.uint32))
    # torch: `left == 1` means the block is used up (twist before the next word); else the next word is state[next]
    pos = np.array([_STATE_WORDS if left == 1 else int(raw[_NEXT].view(np.uint64)[0])], dtype=np.int32)
    out = torch.empty(shape, dtype=torch.bool)
    lib.keep_mask(mt.ctypes.data, pos.ctypes.data, out.data_ptr(), out.numel(), math.ceil(keep_prob * 2.0**53))
    raw[_STATE] = mt.astype(np.uint64).view(np.uint8)
    raw[_LEFT] = np.array([_STATE_WORDS + 1 - pos[0]], dtype=np.int32).view(np.uint8)
    raw[_NEXT] = np.array([pos[0]], dtype=np.uint64).view(np.uint8)
    torch.set_rng_state(state)
    return out


def _agrees(lib: ctypes.CDLL) -> bool:
    """Both ways from the same state, with an odd word offset (a pair straddling two blocks): same masks, same state after."""
    saved = torch.get_rng_state()
    try:
        torch.rand(1)  # one 32-bit word: pairs now straddle block ends
        start = torch.get_rng_state()
        sizes = [(3,), (311,), (4, 5, 7), (3645,)]
        ref = [torch.empty(s, dtype=torch.bool).bernoulli_(0.9) for s in sizes] + [torch.rand(2)]
        torch.set_rng_state(start)
        got = [_native_mask(lib, s, 0.9) for s in sizes] + [torch.rand(2)]
        x = torch.randn(4099)
        x[:3] = torch.tensor([0.0, -0.0, -1.5])
        keep = torch.empty(4099, dtype=torch.bool).bernoulli_(0.9)
        ref.append(x * keep.to(x.dtype).div_(0.9))
        got.append(_apply(lib, x, keep, 0.9))
        same_zeros = torch.equal(torch.signbit(ref[-1]), torch.signbit(got[-1]))
        return same_zeros and all(torch.equal(a, b) for a, b in zip(ref, got))
    finally:
        torch.set_rng_state(saved)


def _load() -> ctypes.CDLL | None:
    global _lib, _checked
    if not _checked:
        _checked = True
        if os.environ.get("SFT_HUB_NATIVE", "1") != "0":
            try:
                lib = _build()
            except OSError as exc:
                log.info("native kernels unavailable (%s): dropout masks drawn by torch", exc)
                lib = None
            if lib is not None and not _agrees(lib):
                log.info("native keep-mask draws differ from this torch's on this CPU: dropout masks drawn by torch")
                lib = None
            _lib = lib
    return _lib


def available() -> bool:
    """True when keep_mask runs the compiled kernel (built and checked against torch on this machine)."""
    return _load() is not None


@functools.lru_cache(maxsize=64)
def _scale(keep_prob: float) -> float:
    return torch.ones((), dtype=torch.float32).div_(keep_prob).item()  # 1 / keep_prob rounded as torch's div_ rounds it


def _apply(lib: ctypes.CDLL, x: torch.Tensor, keep: torch.Tensor, keep_prob: float) -> torch.Tensor:
    scale = _scale(keep_prob)
    x, keep = x.contiguous(), keep.contiguous()
    out = torch.empty_like(x)
    lib.apply_mask(x.data_ptr(), keep.data_ptr(), scale, out.data_ptr(), x.numel())
    return out


def apply_mask(x: torch.Tensor, keep: torch.Tensor, keep_prob: float) -> torch.Tensor:
    """`x * keep.to(x.dtype).div_(keep_prob)` (torch's CPU dropout with a drawn mask): the same floats, one pass."""
    lib = _load()
    if lib is None or x.dtype != torch.float32 or x.device.type != "cpu" or x.shape != keep.shape:
        return x * keep.to(x.dtype).div_(keep_prob)
    return _apply(lib, x, keep, keep_prob)


def keep_mask(shape: tuple[int, ...] | torch.Size, keep_prob: float) -> torch.Tensor:
    """`torch.empty(shape, dtype=torch.bool).bernoulli_(keep_prob)` on the CPU: the same mask and generator state."""
    lib = _load()
    if lib is None:
        return torch.empty(shape, dtype=torch.bool).bernoulli_(keep_prob)
    return _native_mask(lib, tuple(shape), keep_prob)
