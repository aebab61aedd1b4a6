"""The frozen cache of `head` / `partial` (issue 13): same loss as the uncached path in eval mode, same training,
keyed reuse, resume, and off where it would be wrong.

Offline: the tiny 2-layer BERT of conftest, CSV sentences in tmp_path; every run's cache lives in tmp_path.
"""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import FROZEN_ARGS as ARGS, prepared_frozen_cache as prepared, text_recipe
from safetensors.torch import load_file

from sft_hub import runs
from sft_hub.config import parse_recipe
from sft_hub.engine import train
from sft_hub.errors import ConfigError
from sft_hub.frozen_cache import COLUMN, find_plan, prepare


@pytest.mark.parametrize("strategy", [{"name": "head"}, {"name": "partial", "n": 1}, {"name": "partial", "n": 2}])
def test_cached_batch_gives_the_uncached_loss_in_eval_mode(tiny_bert, sentiment_files, tmp_path, strategy):
    raw = text_recipe(tiny_bert, sentiment_files, tmp_path / "run", strategy)
    raw["model"]["dropout"] = 0.3  # eval mode must switch it off in both paths
    p = prepared(raw)
    assert p.record["used"] is True and p.record["cache"] == "extracted"
    assert p.record["cut"] == {"head": "input of classifier", 1: "output of bert.encoder.layer.0",
                               2: "output of bert.embeddings"}[strategy.get("n", "head")]
    assert p.record.get("last_block") == (None if strategy["name"] == "head" else "[CLS] only")
    index = [0, 5, 11, 17, 23, 29]  # rows of different lengths: the cached batch is padded again
    plain = p.collate([p.encoded[i] for i in index])
    cached = p.cached_collate([p.rows[i] for i in index])
    assert COLUMN in cached and torch.equal(cached["labels"], plain["labels"])
    p.model.eval()
    with torch.no_grad():
        want = p.model(**{k: v for k, v in plain.items() if k != "labels"}).logits
        got = p.model(**{k: v for k, v in cached.items() if k != "labels"}).logits
    loss = torch.nn.functional.cross_entropy
    assert abs(loss(got, cached["labels"]).item() - loss(want, plain["labels"]).item()) < 1e-6
    assert torch.allclose(got, want, atol=1e-5)
    p.model.train()  # in train mode the uncached path has dropout in the frozen part, the cached one has none there
    with torch.no_grad():
        noisy = p.model(**{k: v for k, v in plain.items() if k != "labels"}).logits
    assert not torch.allclose(noisy, want, atol=1e-5)


def test_cached_rows_are_reused_by_key_and_rebuilt_for_other_inputs(tiny_bert, sentiment_files, tmp_path):
    raw = text_recipe(tiny_bert, sentiment_files, tmp_path / "run", {"name": "partial", "n": 1, "cache_dir": str(tmp_path / "c")})
    first, again = prepared(raw), prepared(raw)
    assert (first.record["cache"], again.record["cache"]) == ("extracted", "hit")
    assert first.record["key"] == again.record["key"] and len(list((tmp_path / "c").iterdir())) == 1
    raw["data"]["max_length"] = 6  # other tokenisation: another key, extracted again
    other = prepared(raw)
    assert other.record["cache"] == "extracted" and other.record["key"] != first.record["key"]
    assert len(list((tmp_path / "c").iterdir())) == 2


def test_head_shares_the_linear_probe_entry(tiny_bert, sentiment_files, tmp_path):
    cache = tmp_path / "c"
    probe = text_recipe(tiny_bert, sentiment_files, tmp_path / "probe", {"name": "linear_probe", "cv": 2, "cache_dir": str(cache)})
    train(parse_recipe(probe))
    head = prepared(text_recipe(tiny_bert, sentiment_files, tmp_path / "head", {"name": "head", "cache_dir": str(cache)}))
    assert head.record["cache"] == "hit" and len(list(cache.iterdir())) == 1


def saved(run_dir, folder: str) -> dict:
    return {k: v for f in sorted((run_dir / folder).glob("*.safetensors")) for k, v in load_file(str(f)).items()}


@pytest.mark.parametrize("strategy", [{"name": "head"}, {"name": "partial", "n": 1}, {"name": "partial", "n": 2}])
def test_training_on_the_cache_matches_training_without_it(tiny_bert, sentiment_files, tmp_path, strategy):
    """Without dropout the frozen part gives the same outputs in train and eval mode: both runs learn the same weights
    (`partial`: with the last block run for [CLS] only in the cached run, the whole block in the other)."""
    out = {}
    for flag in (True, False):
        raw = text_recipe(tiny_bert, sentiment_files, tmp_path / str(flag), {**strategy, "cache_frozen": flag},
                          max_steps=8, group_by_length=True)
        out[flag] = train(parse_recipe(raw))
    on, off = out[True]["manifest"], out[False]["manifest"]
    assert on["frozen_cache"]["used"] is True and on["frozen_cache"]["frozen_layers"].startswith("eval")
    assert on["frozen_cache"].get("last_block") == (None if strategy["name"] == "head" else "[CLS] only")
    assert on["frozen_cache"]["check_max_abs_diff"] <= 1e-4 and len(on["frozen_cache"]["key"]) == 32
    assert off["frozen_cache"] == {"used": False, "option": False, "reason": "strategy.cache_frozen is false"}
    a, b = saved(tmp_path / "True", on["saved_as"]), saved(tmp_path / "False", off["saved_as"])
    assert a.keys() == b.keys() and a
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
    losses = [[r["loss"] for r in out[flag]["trainer"].state.log_history if "loss" in r] for flag in (True, False)]
    assert len(losses[0]) == 8 and len(set(losses[0])) > 1  # it trained: the loss moved
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    m1, m2 = out[True]["metrics"]["validation"], out[False]["metrics"]["validation"]
    assert m1["eval_validation_loss"] == pytest.approx(m2["eval_validation_loss"], abs=1e-5)


def test_resume_on_the_cache_is_exact(tiny_bert, sentiment_files, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    raw = text_recipe(tiny_bert, sentiment_files, straight, {"name": "partial", "n": 1, "cache_frozen": True}, max_steps=4,
                      save_strategy="steps", save_steps=2, per_device_train_batch_size=4)
    raw["model"]["dropout"] = 0.1  # the trained block's dropout: its RNG state must come back
    train(parse_recipe(raw))
    shutil.copytree(straight / "checkpoints" / "checkpoint-2", resumed / "checkpoints" / "checkpoint-2")
    raw["training"]["output_dir"] = str(resumed)
    shutil.copy2(straight / runs.LABELS, resumed / runs.LABELS)
    (resumed / runs.RECIPE).write_text(yaml.safe_dump(raw))
    again = train(parse_recipe(raw))
    assert again["manifest"]["frozen_cache"]["cache"] == "hit" and again["trainer"].state.global_step == 4
    log = lambda d: {r["step"]: r["loss"] for r in map(json.loads, (d / runs.METRICS_LOG).read_text().splitlines()) if "loss" in r}  # noqa: E731
    assert log(resumed) == {s: v for s, v in log(straight).items() if s > 2}
    a, b = saved(straight, "partial"), saved(resumed, "partial")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_off_where_it_would_be_wrong_or_impossible(tiny_bert, sentiment_files, tmp_path):
    raw = text_recipe(tiny_bert, sentiment_files, tmp_path / "run", {"name": "partial", "n": "all"})
    p = prepared(raw)
    assert p.record == {"used": False, "option": "auto", "reason": "parameters below the top blocks train"}
    assert p.rows is p.encoded and "forward" not in vars(p.model)
    lora = prepared(text_recipe(tiny_bert, sentiment_files, tmp_path / "lora"))
    assert lora.record is None  # strategies without the option: nothing recorded, nothing changed
    raw["strategy"] = {"name": "partial", "n": "all", "cache_frozen": True}
    with pytest.raises(ConfigError, match=r"strategy.cache_frozen: true, but parameters below the top blocks train"):
        prepared(raw)


def test_augmented_modalities_are_off_in_auto_and_refused_when_forced(tiny_bert, tmp_path):
    from sft_hub.model_info import ModelInfo
    from sft_hub.strategies import parse_strategy

    info = ModelInfo(family="resnet", blocks=[], head=["fc"], modality="image")
    model = torch.nn.Sequential()
    model.add_module("body", torch.nn.Linear(4, 4).requires_grad_(False))
    model.add_module("fc", torch.nn.Linear(4, 2))
    assert find_plan(model, info).kind == "head"  # the cut exists; augmentation is what rules it out
    inputs = SimpleNamespace(encoded={"train": "rows"}, data=SimpleNamespace(train_split="train"), collate="collate")
    rows, collate, record = prepare(parse_strategy("head"), model, info, inputs, ARGS)
    assert (rows, collate, record["used"]) == ("rows", "collate", False) and "augmented" in record["reason"]
    with pytest.raises(ConfigError, match="strategy.cache_frozen: true, but image task: training rows may be augmented"):
        prepare(parse_strategy({"name": "head", "cache_frozen": True}), model, info, inputs, ARGS)
    with pytest.raises(ConfigError, match="strategy.cache_frozen: expected bool or 'auto', got str 'always'"):
        parse_strategy({"name": "head", "cache_frozen": "always"})


def test_cached_collator_pads_rows_and_keeps_label_kinds():
    import numpy as np

    from sft_hub.frozen_cache import CachedCollator

    collate = CachedCollator(lambda rows: {"plain": len(rows)}, dim=2)
    rows = [{COLUMN: np.arange(6, dtype=np.float32), "labels": np.int64(1)}, {COLUMN: np.arange(2, dtype=np.float32), "labels": np.int64(0)}]
    batch = collate(rows)
    assert batch[COLUMN].shape == (2, 3, 2) and batch[COLUMN][1, 1:].abs().sum() == 0 and batch[COLUMN][1, 0].tolist() == [0, 1]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]] and batch["labels"].dtype == torch.int64
    regression = collate([{COLUMN: np.ones(2, np.float32), "labels": np.float64(0.5)}])["labels"]
    multi = CachedCollator(None, None)([{COLUMN: np.ones(3, np.float32), "labels": [1.0, 0.0]}] * 2)
    assert regression.dtype == torch.float32 and multi["labels"].shape == (2, 2) and multi["labels"].dtype == torch.float32
    assert multi[COLUMN].shape == (2, 3) and "attention_mask" not in multi
    assert collate([{"input_ids": [1]}]) == {"plain": 1}  # eval batches go to the task's collator


def test_streamed_training_rows_turn_the_cache_off() -> None:
    """A streamed train split (data.streaming) is read pass by pass: nothing to cache, whatever the strategy."""
    from datasets import IterableDataset

    from sft_hub.frozen_cache import _why_not

    stream = IterableDataset.from_generator(lambda: iter([{"input_ids": [1, 2]}]))
    args = SimpleNamespace(world_size=1, n_gpu=1)
    info = SimpleNamespace(modality="text")
    assert "streamed" in _why_not("auto", info, args, stream)
    assert _why_not("auto", info, args, __import__("datasets").Dataset.from_dict({"input_ids": [[1, 2]]})) is None
