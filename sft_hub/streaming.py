"""Streamed training data (`data.streaming: true`): read, shard across ranks, and resume exactly.

A streamed train split is a `datasets.IterableDataset` (local files or a Hub dataset read with
`streaming=True`; nothing is downloaded or cached whole), given the same preprocessing as the map-style
path (the task's own `encode`). `TrainStream` gives each rank its part (`split_dataset_by_node`), repeats
the stream in its stored order until `training.max_steps` (no shuffle buffer: `datasets` drops a
buffer's examples on resume, which would break exact resume; shuffle the files beforehand), and remembers where every example began,
so a checkpoint records the position of the first example not yet trained on and a resumed run starts
there (`datasets`' own `state_dict` / `load_state_dict`) instead of reading its way back. Eval splits
are read whole (bounded by `max_eval_samples`) into an in-memory `Dataset`, so metrics count every
example once on any number of ranks, exactly as for map-style data.
"""

from __future__ import annotations

import collections
import itertools
import json
from pathlib import Path
from typing import Any, Iterator

import torch
from datasets import Dataset, IterableDataset
from datasets.distributed import split_dataset_by_node
from transformers import TrainerCallback

from sft_hub.errors import ConfigError, RunError

STATE_FILE = "stream_state_{rank}.json"


def check_recipe(training: dict[str, Any], strategy: Any) -> None:
    """A stream has no length (the run's length is given in steps) and is read once per pass, by the Trainer."""
    if int(training.get("max_steps") or -1) <= 0:
        raise ConfigError("data.streaming: needs training.max_steps (a streamed dataset has no length to count epochs by)")
    if not strategy.needs_training_loop:
        raise ConfigError(f"strategy.name: {strategy.name} is fitted on every training row at once; not available with data.streaming")


def attach(train_set: Any, args: Any, checkpoint: Path | None, run_dir: Path) -> tuple[Any, list]:
    """(the Trainer's train dataset, callbacks): a streamed split becomes this rank's `TrainStream`, restored from
    `checkpoint` when resuming, with the callback that saves its position; map-style data is returned as it is."""
    if not isinstance(train_set, IterableDataset):
        return train_set, []
    stream = TrainStream(train_set, args.process_index, args.world_size)
    if checkpoint:
        stream.restore(checkpoint)
    return stream, [StreamPosition(stream, run_dir)]


def materialise(stream: IterableDataset, limit: int | None) -> Dataset:
    """An eval split read whole (or its first `limit` rows) into memory."""
    rows = list(itertools.islice(stream, limit)) if limit is not None else list(stream)
    return Dataset.from_list(rows)


class TrainStream(torch.utils.data.IterableDataset):
    """This rank's part of the train stream, repeated pass after pass, with a position that can be saved."""

    def __init__(self, stream: IterableDataset, rank: int, world_size: int):
        self.stream = split_dataset_by_node(stream, rank=rank, world_size=world_size)
        self.rank = rank
        self._resume: dict | None = None  # {"pass", "state", "consumed"} read from a checkpoint
        self._starts: collections.deque = collections.deque(maxlen=4096)  # (index, pass, state) per yielded example
        self._next: tuple[int, int] = (0, 0)  # (index, pass) of the example the stream would yield next

    def __iter__(self) -> Iterator[dict]:
        index, epoch = 0, 0
        if self._resume is not None:  # datasets applies a loaded state to the pass (`epoch`) it was saved in
            index, epoch = int(self._resume["consumed"]), int(self._resume["pass"])
            self.stream.load_state_dict(self._resume["state"])
        while True:
            self.stream.set_epoch(epoch)
            iterator, yielded = iter(self.stream), 0
            while True:
                state = self.stream.state_dict()  # where the next example begins
                try:
                    example = next(iterator)
                except StopIteration:
                    break
                self._starts.append((index, epoch, state))
                index, yielded = index + 1, yielded + 1
                self._next = (index, epoch)
                yield example
            if yielded == 0 and index == 0:
                raise RunError(f"data: rank {self.rank} got no training examples from the stream (fewer rows than ranks?)")
            epoch += 1

    def position(self, consumed: int) -> dict:
        """The saved form of "the next example to train on is the `consumed`-th of this rank"."""
        for index, epoch, state in self._starts:
            if index == consumed:
                return {"pass": epoch, "state": state, "consumed": consumed}
        if self._next[0] == consumed:  # nothing read ahead: the stream stands where the next example begins
            return {"pass": self._next[1], "state": self.stream.state_dict(), "consumed": consumed}
        raise RunError(f"stream position {consumed} of rank {self.rank} is no longer known (read-ahead beyond {self._starts.maxlen})")

    def restore(self, checkpoint: Path) -> None:
        path = checkpoint / STATE_FILE.format(rank=self.rank)
        if not path.is_file():
            raise RunError(f"--resume {checkpoint}: no {path.name}; was it trained with another number of processes or without streaming?")
        self._resume = json.loads(path.read_text())


class StreamPosition(TrainerCallback):
    """Writes each rank's stream position into every checkpoint (before it is marked complete)."""

    def __init__(self, stream: TrainStream, run_dir: Path):
        self.stream, self.run_dir = stream, run_dir

    def on_save(self, args, state, control, **kwargs):
        consumed = state.global_step * args.gradient_accumulation_steps * args.per_device_train_batch_size
        folder = self.run_dir / "checkpoints" / f"checkpoint-{state.global_step}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / STATE_FILE.format(rank=args.process_index)).write_text(json.dumps(self.stream.position(consumed)))


def open_files(kind: str, files: dict[str, str]) -> dict[str, IterableDataset]:
    """The user's table files as streams (one per split), read by the same `datasets` builders as map-style."""
    from datasets import load_dataset

    from sft_hub.tasks.files import BUILDERS

    builder, kwargs = BUILDERS[kind]
    if builder == "csv":
        kwargs = {**kwargs, "keep_default_na": False}
    return {split: load_dataset(builder, data_files={split: f}, split=split, streaming=True, **kwargs) for split, f in files.items()}


def label_mapper(names: list[str] | None, split: str):
    """raw_label -> labels for streamed rows: a class name or id (classification), or a number (names None)."""
    from sft_hub.errors import DataError

    def to_id(row: dict) -> dict:
        value = row["raw_label"]
        if names is None:
            try:
                return {"labels": float(value)}
            except (TypeError, ValueError):
                raise DataError(f"data.label_column: split {split!r}: {value!r} is not a number") from None
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names):
            return {"labels": value}
        if str(value) in names:
            return {"labels": names.index(str(value))}
        raise DataError(f"data: label {value!r} in split {split!r} is not one of data.labels ({', '.join(names)})")

    return to_id
