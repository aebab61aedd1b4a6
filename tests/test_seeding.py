"""Augmentation draws keyed by (seed, epoch, row): repeatable, new each epoch, global RNG untouched, seen by workers."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from sft_hub.tasks.seeding import SampleSeeds


def draw(seeds: SampleSeeds, row: int) -> float:
    with seeds.seeded(row):
        return torch.rand(()).item()


def test_same_key_same_draw_new_epoch_new_draw_global_rng_untouched():
    seeds = SampleSeeds()
    seeds.set_epoch(0, 42)
    torch.manual_seed(7)
    expected_global = torch.rand(3)
    torch.manual_seed(7)
    a = [draw(seeds, r) for r in range(4)]
    assert torch.equal(torch.rand(3), expected_global)  # the global stream never moved
    assert a == [draw(seeds, r) for r in range(4)] and len(set(a)) == 4
    seeds.set_epoch(1, 42)
    assert [draw(seeds, r) for r in range(4)] != a
    seeds.set_epoch(0, 43)
    assert [draw(seeds, r) for r in range(4)] != a


class Rows(Dataset):
    def __init__(self, seeds: SampleSeeds):
        self.seeds = seeds

    def __len__(self) -> int:
        return 4

    def __getitem__(self, row: int) -> float:
        return draw(self.seeds, row)


def test_persistent_workers_see_the_new_epoch():
    seeds = SampleSeeds()
    loader = DataLoader(Rows(seeds), batch_size=4, num_workers=1, persistent_workers=True)
    seeds.set_epoch(0, 1)
    first = next(iter(loader)).tolist()
    seeds.set_epoch(1, 1)
    second = next(iter(loader)).tolist()
    assert second != first
    seeds.set_epoch(0, 1)
    assert next(iter(loader)).tolist() == first
