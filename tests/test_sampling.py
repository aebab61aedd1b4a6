"""Length-grouped batches in random order: the same batches as transformers' grouping, shuffled, seeded."""

from __future__ import annotations

import random

import torch
from conftest import text_recipe
from transformers.trainer_pt_utils import get_length_grouped_indices

from sft_hub.config import parse_recipe
from sft_hub.engine import train
from sft_hub.sampling import LengthGroupedBatches


def batches(sampler, bs):
    order = list(sampler)
    return [order[i:i + bs] for i in range(0, len(order), bs)]


def test_same_batches_as_transformers_grouping_in_shuffled_order():
    rng = random.Random(0)
    lengths = [rng.randint(1, 128) for _ in range(1003)]
    sampler = LengthGroupedBatches(lengths, batch_size=10, seed=5)
    sampler.set_epoch(2)
    got = batches(sampler, 10)
    assert sorted(i for b in got for i in b) == list(range(1003))  # every row once
    grouped = get_length_grouped_indices(lengths, 10, generator=torch.Generator().manual_seed(5 + 2))
    theirs = [grouped[i:i + 10] for i in range(0, len(grouped), 10)]
    assert sorted(map(sorted, got)) == sorted(map(sorted, theirs))  # the same batches: the same padding
    assert got[0] == theirs[0] and max(lengths) in [lengths[i] for i in got[0]]  # longest batch first
    assert len(got[-1]) == 3 and got[-1] == theirs[-1]  # the partial batch stays last
    heads = [lengths[b[0]] for b in got[1:-1]]
    theirs_heads = [lengths[b[0]] for b in theirs[1:-1]]
    falls = lambda xs: sum(a >= b for a, b in zip(xs, xs[1:]))  # noqa: E731
    assert falls(theirs_heads) > 0.9 * len(theirs_heads) and falls(heads) < 0.7 * len(heads)  # no long-to-short sweeps


def test_order_depends_on_seed_and_epoch_only():
    lengths = list(range(1, 201))
    a, b = LengthGroupedBatches(lengths, 8, seed=1), LengthGroupedBatches(lengths, 8, seed=1)
    torch.manual_seed(123)  # the global RNG plays no part
    first = list(a)
    torch.manual_seed(999)
    assert list(b) == first
    a.set_epoch(1)
    assert list(a) != first and sorted(a) == sorted(first)
    assert list(LengthGroupedBatches(lengths, 8, seed=2)) != first


def test_engine_uses_it_for_group_by_length(tiny_bert, sentiment_files, tmp_path):
    for grouped in (True, False):
        raw = text_recipe(tiny_bert, sentiment_files, tmp_path / str(grouped), max_steps=1, group_by_length=grouped)
        trainer = train(parse_recipe(raw))["trainer"]
        assert isinstance(trainer._get_train_sampler(), LengthGroupedBatches) == grouped
