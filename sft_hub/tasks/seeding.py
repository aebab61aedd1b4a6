"""Training-time augmentation that resumes exactly: draws seeded by (seed, epoch, row), not the global RNG.

Data loading runs ahead of training (accelerate prefetches the next batch; DataLoader workers prefetch
more), so a random crop drawn from the global RNG while a batch loads would use a different RNG state
after a resume than in the straight run, and would shift dropout's draws too. Augmentation therefore
runs inside `SampleSeeds.seeded(row)`: a private RNG state derived from the run's seed, the epoch and the
row's index in the training split. The same row in the same epoch gets the same augmentation, in the
straight run, after a resume, in any DataLoader worker and at any world size; the global RNG is untouched.

The engine calls `set_epoch(epoch, seed)` at the start of every epoch on the training split's transform
and on the collator, when they have that method. The state lives in shared memory, so persistent
DataLoader workers see the new epoch.
"""

from __future__ import annotations

import hashlib
import random
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch

ROW = "_row"  # the column encode() adds to the training split: each row's index, the key of its draws


class SampleSeeds:
    def __init__(self) -> None:
        self._state = torch.zeros(2, dtype=torch.int64).share_memory_()  # [seed, epoch]

    def set_epoch(self, epoch: int, seed: int) -> None:
        self._state[0], self._state[1] = int(seed), int(epoch)

    def seed_for(self, *key: Any) -> int:
        seed, epoch = (int(v) for v in self._state)
        digest = hashlib.blake2b(repr((seed, epoch, *key)).encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") & (2**63 - 1)

    @contextmanager
    def seeded(self, *key: Any) -> Iterator[None]:
        """torch, `random` and numpy's global RNGs seeded for `key` inside, restored after."""
        value = self.seed_for(*key)
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(value)
            random.seed(value)
            np.random.seed(value % 2**32)
            try:
                yield
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)


def with_rows(ds: Any) -> Any:
    """The training split with its row index as a column (the key of each row's augmentation draws)."""
    return ds if ROW in ds.column_names else ds.add_column(ROW, np.arange(len(ds), dtype=np.int64))
