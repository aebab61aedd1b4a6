"""Length-grouped training batches, in random order, seeded by (seed, epoch).

transformers' `LengthGroupedSampler` (what `group_by_length` gives) shuffles, cuts the data into
mega-batches of ~50 batches and sorts each by length, then yields the batches in that sorted order: the
model sees long sentences first and shorter ones after, in a sweep repeated every mega-batch, and on
SST-2 (many short phrases) full fine-tuning lost about 1.3 dev-accuracy points to that ordering in
`benchmarks/sst2_throughput.py`. Here the batches are the same (same padding saved), but their order is
shuffled; the longest batch still comes first (an out-of-memory error shows at step 1), a partial last
batch stays last (so the DataLoader's batches are exactly the grouped ones). The draws come from a
generator seeded by (seed, epoch), not the global RNG, so every rank agrees and a resume is exact.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Sampler
from transformers import Trainer
from transformers.trainer_pt_utils import get_length_grouped_indices


class LengthGroupedBatches(Sampler[int]):
    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed, self.epoch = [int(n) for n in lengths], batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:  # accelerate's DataLoaderShard and Trainer call this every epoch
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        indices = get_length_grouped_indices(self.lengths, self.batch_size, generator=gen)
        bs = self.batch_size
        batches = [indices[i:i + bs] for i in range(0, len(indices), bs)]
        full, tail = (batches[:-1], batches[-1:]) if batches and len(batches[-1]) < bs else (batches, [])
        order = [0] + (torch.randperm(len(full) - 1, generator=gen) + 1).tolist() if full else []
        for batch in [full[i] for i in order] + tail:
            yield from batch


class EngineTrainer(Trainer):
    """`transformers.Trainer` whose `group_by_length` uses `LengthGroupedBatches` when the data has lengths,
    whose optimizer takes the strategy's parameter groups (`param_groups(model, lr)`) when it gives any,
    and whose streamed train data (`streaming.TrainStream`, already this rank's part) is batched as it is."""

    def __init__(self, *args, param_groups=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.strategy_param_groups = param_groups  # (model, lr) -> list[dict] | None

    def create_optimizer(self, model=None):
        groups = None
        if self.optimizer is None and self.strategy_param_groups is not None:
            groups = self.strategy_param_groups(self.model if model is None else model, self.args.learning_rate)
        if groups is None:
            return super().create_optimizer(model)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model if model is None else model)
        for group in groups:  # a group's own lr / weight_decay win; otherwise the run's (not the optimizer class's) defaults
            group.setdefault("lr", self.args.learning_rate)
            group.setdefault("weight_decay", self.args.weight_decay)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def get_train_dataloader(self):
        from sft_hub.streaming import TrainStream

        if isinstance(self.train_dataset, TrainStream):  # no accelerate sharding or dispatching on top of ours
            # its own generator: starting an iterator draws a seed, which must not shift the global RNG that
            # dropout uses (a resumed run restores that RNG, then starts a new iterator)
            return DataLoader(self.train_dataset, batch_size=self._train_batch_size, collate_fn=self.data_collator,
                              num_workers=0, generator=torch.Generator().manual_seed(self.args.seed))
        return super().get_train_dataloader()

    def _get_train_sampler(self, train_dataset=None):
        ds = self.train_dataset if train_dataset is None else train_dataset
        args, name = self.args, self.args.length_column_name
        if args.train_sampling_strategy == "group_by_length" and name in (getattr(ds, "column_names", None) or ()):
            seed = args.data_seed if args.data_seed is not None else args.seed
            lengths = ds.with_format(None)[name]  # no transform: only the column is read
            return LengthGroupedBatches(lengths, args.train_batch_size * args.gradient_accumulation_steps, seed)
        return super()._get_train_sampler(train_dataset)

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device):
        """A loss that divides by utterances (`counts = "rows"`, CTC per recipe) counts labelled rows, not label tokens."""
        loss_fn = getattr(self.compute_loss_func, "loss_fn", self.compute_loss_func)  # the NonFiniteGuard wraps it
        if getattr(loss_fn, "counts", "labels") == "rows" and batch_samples and "labels" in batch_samples[0]:
            batch_samples = [{"labels": torch.zeros(len(b["labels"]), device=b["labels"].device)} for b in batch_samples]
        return super()._get_num_items_in_batch(batch_samples, device)
