"""The cached top's BERT blocks in cls_only.py's forms (the last for [CLS] only, those below on real tokens only): the
whole model's logits, loss and gradients in eval mode, dropout still active in train mode, and the whole blocks
wherever the forms are not known to be exact.

Offline: the tiny 2-layer BERT of conftest, CSV sentences in tmp_path (fixtures shared through conftest).
"""

from __future__ import annotations

import pytest
import torch
from conftest import prepared_frozen_cache, text_recipe
from transformers import BertConfig, BertForSequenceClassification, BertForTokenClassification

from sft_hub import cls_only, frozen_cache

ROWS = [0, 5, 11, 17, 23, 29]  # rows of different lengths: the batch has padding, so the mask matters


def loss_and_grads(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    labels = batch["labels"]
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    loss = torch.nn.functional.cross_entropy(logits, labels)
    loss.backward()
    return logits.detach(), loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("n", [1, 2])
def test_cls_only_top_gives_the_whole_models_loss_and_gradients(tiny_bert, sentiment_files, tmp_path, monkeypatch, attention, n):
    raw = text_recipe(tiny_bert, sentiment_files, tmp_path / "run", {"name": "partial", "n": n})
    raw["model"]["dropout"] = 0.3  # eval mode switches it off in both paths
    p = prepared_frozen_cache(raw, attention)
    assert p.model.config._attn_implementation == attention
    assert p.record["used"] is True and p.record["last_block"] == "[CLS] only" and p.record["check_max_abs_diff"] < 1e-5
    calls = []
    for form in (cls_only.ClsOnlyLayer, cls_only.PackedLayer):
        counted = lambda self, *a, real=form.forward, **k: calls.append(type(self).__name__) or real(self, *a, **k)  # noqa: E731
        monkeypatch.setattr(form, "forward", counted)
    plain = p.collate([p.encoded[i] for i in ROWS])
    cached = p.cached_collate([p.rows[i] for i in ROWS])
    assert plain["attention_mask"].min() == 0  # padded rows in the batch
    p.model.eval()
    want_logits, want_loss, want = loss_and_grads(p.model, plain)
    assert not calls  # the uncached path runs the whole model
    got_logits, got_loss, got = loss_and_grads(p.model, cached)
    # the cached path ran the last block for [CLS] only, and the one below it (n: 2) on the real tokens only
    assert calls == ["PackedLayer"] * (n - 1) + ["ClsOnlyLayer"]
    assert torch.allclose(got_logits, want_logits, atol=1e-5) and abs(got_loss.item() - want_loss.item()) < 1e-5
    assert got.keys() == want.keys() and any("encoder.layer.1.attention.self.key" in k for k in got)
    scale = max(g.abs().max().item() for g in want.values())
    assert scale > 1e-3  # the gradients are not trivially zero
    assert max((got[k] - want[k]).abs().max().item() for k in want) < 1e-5 * max(scale, 1.0)
    p.model.train()  # train mode: the last block's dropout of attention probabilities is on in this form too
    last = p.model.bert.encoder.layer[-1].attention.self.dropout
    for module in p.model.modules():
        if isinstance(module, torch.nn.Dropout) and module is not last:
            module.p = 0.0
    with torch.no_grad():
        a, b = (p.model(**{k: v for k, v in cached.items() if k != "labels"}).logits for _ in range(2))
    assert not torch.equal(a, b)  # without that dropout both forwards give the same bits


def test_switched_off_the_cached_top_runs_the_whole_block(tiny_bert, sentiment_files, tmp_path, monkeypatch):
    monkeypatch.setattr(frozen_cache, "CLS_ONLY", False)
    raw = text_recipe(tiny_bert, sentiment_files, tmp_path / "run", {"name": "partial", "n": 1})
    p = prepared_frozen_cache(raw)
    assert p.record["used"] is True and p.record["last_block"] == "whole: switched off (frozen_cache.CLS_ONLY)"
    assert p.record["check_max_abs_diff"] < 1e-5


def tiny_config(**kwargs) -> BertConfig:
    return BertConfig(vocab_size=20, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                      max_position_embeddings=16, **kwargs)


def test_whole_block_wherever_the_form_is_not_known_to_be_exact():
    model = BertForSequenceClassification(tiny_config())
    layers = list(model.bert.encoder.layer)
    trunk = "bert.encoder.layer"
    assert cls_only.why_not(model, trunk, layers[1:]) is None
    assert cls_only.why_not(model, trunk, []) == "no trained block"

    class MeanPooled(BertForSequenceClassification):  # a forward of its own may read every position
        def forward(self, *args, **kwargs):
            return super().forward(*args, **kwargs)

    assert "is not BertForSequenceClassification" in cls_only.why_not(MeanPooled(tiny_config()), trunk, layers)
    tokens = BertForTokenClassification(tiny_config())  # reads every position
    assert "is not BertForSequenceClassification" in cls_only.why_not(tokens, trunk, list(tokens.bert.encoder.layer))
    model.bert.pooler = None
    assert "pooler" in cls_only.why_not(model, trunk, layers)
    decoder = BertForSequenceClassification(tiny_config(is_decoder=True))
    assert "decoder" in cls_only.why_not(decoder, trunk, list(decoder.bert.encoder.layer))
    other = BertForSequenceClassification(tiny_config())
    other.config._attn_implementation = "flex_attention"
    assert "attention implementation 'flex_attention'" == cls_only.why_not(other, trunk, list(other.bert.encoder.layer))
    other.config._attn_implementation = "eager"
    assert cls_only.why_not(other, trunk, [torch.nn.Linear(2, 2)]) == "a trained block is not a BertLayer with BERT self-attention"
    wrapped = list(other.bert.encoder.layer)
    wrapped[-1].attention.self.value = torch.nn.Sequential(wrapped[-1].attention.self.value)  # e.g. an adapter around it
    assert "key / value projections" in cls_only.why_not(other, trunk, wrapped)
