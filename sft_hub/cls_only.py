"""The frozen cache's trained BERT blocks computed only where the logits need them (issue 13, `partial`): exact.

`BertForSequenceClassification` reads the encoder's output at position 0 only (its pooler takes
`hidden[:, 0]`, then dropout and the classifier), and padded positions reach nothing (they are masked keys).
So in the cached top's forward (`frozen_cache._top_forward`, where sft-hub owns the call):
  - the last block runs for [CLS] only (`ClsOnlyLayer`): keys and values still span every token, but the
    query, the attention over one query row, the attention output dense + LayerNorm and the feed-forward
    are computed for position 0 alone, and the key/value projections are moved onto that one query;
  - the trained blocks below it run their per-token parts on the real tokens only (`PackedLayer`).
Used only when `why_not` finds the exact classes whose code these forms mirror (transformers 5 `BertLayer`,
eager or sdpa attention, no decoder / cross-attention); anything else runs the whole blocks. In eval mode
they give the whole blocks' logits and gradients (float rounding aside); in train mode their dropouts
draw masks for fewer elements, so the RNG stream differs from the whole blocks': another, equally valid
draw, not the same training.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.bert import modeling_bert as mb

ATTENTION = ("eager", "sdpa")  # the interfaces whose mask formats and dropout placement these forms mirror


def why_not(model: nn.Module, trunk: str, top: list[nn.Module]) -> str | None:
    """None when `top` (the trained blocks of `model.<trunk>`) may run in the forms below, else the reason."""
    if not top:
        return "no trained block"
    if type(model).forward is not mb.BertForSequenceClassification.forward or trunk != "bert.encoder.layer":
        return f"{type(model).__name__} is not BertForSequenceClassification"
    bert = model.bert
    if type(bert.pooler) is not mb.BertPooler or type(bert.encoder).forward is not mb.BertEncoder.forward:
        return "the pooler or the encoder is not BERT's own (one that reads position 0 only)"
    for layer in top:
        if (type(layer) is not mb.BertLayer or type(layer.attention) is not mb.BertAttention
                or type(layer.attention.self) is not mb.BertSelfAttention):
            return "a trained block is not a BertLayer with BERT self-attention"
        if any(type(getattr(layer.attention.self, p)) is not nn.Linear for p in ("key", "value")):
            return "the key / value projections are not plain Linear layers (ClsOnlyLayer reads their weights)"
        if model.config.is_decoder or getattr(layer, "add_cross_attention", False):
            return "a decoder / cross-attention block"
    if model.config._attn_implementation not in ATTENTION:
        return f"attention implementation {model.config._attn_implementation!r}"
    return None


def bert_top(top: list[nn.Module], token_mask: torch.Tensor) -> list[nn.Module]:
    """The cached top's blocks: the last one for [CLS] only, the ones below it on the real tokens only."""
    index = token_mask.reshape(-1).nonzero().squeeze(1)  # one device sync a step
    padded = index.numel() < token_mask.numel()
    return [PackedLayer(b, index) if padded else b for b in top[:-1]] + [ClsOnlyLayer(top[-1])]


def _whole(layer: nn.Module, attention_mask: torch.Tensor | None, past_key_values: Any) -> bool:
    """What these forms do not mirror: gradient checkpointing, a cache, a mask not of shape (batch, 1, query, key)."""
    return (getattr(layer, "gradient_checkpointing", False) and layer.training or past_key_values is not None
            or attention_mask is not None and attention_mask.dim() != 4)


class _LayerForm(nn.Module):
    """A `BertLayer`'s call signature; the whole block where the form does not mirror it, else `run`."""

    def __init__(self, layer: mb.BertLayer) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None, encoder_attention_mask: torch.Tensor | None = None,
                past_key_values: Any = None, **kwargs: Any) -> torch.Tensor:
        if _whole(self.layer, attention_mask, past_key_values):
            return self.layer(hidden_states, attention_mask, encoder_hidden_states, encoder_attention_mask=encoder_attention_mask,
                              past_key_values=past_key_values, **kwargs)
        return self.run(hidden_states, attention_mask, **kwargs)

    def run(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, **kwargs: Any) -> torch.Tensor:
        raise NotImplementedError


class PackedLayer(_LayerForm):
    """A `BertLayer` whose per-token parts (projections, output dense, LayerNorms, feed-forward) run on the real
    tokens only; attention runs on the padded layout with the mask. Output: zeros at padded positions.

    Padded positions never reach the logits (they are masked keys above, never a query the pooler reads), so
    skipping them is exact; with length-grouped batches of short sentences they are about 15% of the tokens.
    """

    def __init__(self, layer: mb.BertLayer, index: torch.Tensor) -> None:
        super().__init__(layer)
        self.index = index  # the real tokens' flat positions in (batch * length)

    def run(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, **kwargs: Any) -> torch.Tensor:
        layer = self.layer
        attn = layer.attention.self
        batch, length, size = hidden_states.shape
        x = hidden_states.reshape(batch * length, size).index_select(0, self.index)

        def spread(t: torch.Tensor) -> torch.Tensor:  # real tokens back into the padded layout, zeros elsewhere
            return t.new_zeros(batch * length, t.shape[-1]).index_copy(0, self.index, t)

        heads = (batch, length, -1, attn.attention_head_size)
        query, key, value = (spread(p(x)).view(*heads).transpose(1, 2) for p in (attn.query, attn.key, attn.value))
        interface = ALL_ATTENTION_FUNCTIONS.get_interface(attn.config._attn_implementation, mb.eager_attention_forward)
        out, _ = interface(attn, query, key, value, attention_mask, dropout=attn.dropout.p if attn.training else 0.0,
                           scaling=attn.scaling, **kwargs)
        out = out.reshape(batch * length, -1).index_select(0, self.index)
        y = layer.feed_forward_chunk(layer.attention.output(out, x))
        return spread(y).view(batch, length, size)


class ClsOnlyLayer(_LayerForm):
    """A `BertLayer` run for position 0 only: output (batch, 1, hidden).

    Keys and values are never projected for every token. With q the [CLS] query of one head, W_k, b_k, W_v,
    b_v that head's rows of the key / value projections, h_j the block's input and p_j the (dropped-out)
    attention probabilities:
      score_j = q . (W_k h_j + b_k) = (W_k^T q) . h_j + q . b_k
      output  = sum_j p_j (W_v h_j + b_v) = W_v (sum_j p_j h_j) + b_v sum_j p_j
    the same sums in another order, so the cost per token is one dot product per head instead of two
    hidden x hidden projections. The attention itself is eager's (scores, mask, softmax, dropout on the
    probabilities), which is also what sdpa computes: a boolean mask keeps the positions it marks, a float
    mask is added to the scores.
    """

    def run(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, **kwargs: Any) -> torch.Tensor:
        layer = self.layer
        attn = layer.attention.self
        batch, heads, size = hidden_states.shape[0], attn.num_attention_heads, attn.attention_head_size
        cls = hidden_states[:, :1]
        query = attn.query(cls).view(batch, heads, size)
        w_key = attn.key.weight.view(heads, size, -1)
        scores = torch.einsum("bhi,bsi->bhs", torch.einsum("bhd,hdi->bhi", query, w_key), hidden_states)
        # q . b_k is the same for every position (softmax ignores it); kept so b_k gets the whole block's gradient
        scores = (scores + (query * attn.key.bias.view(heads, size)).sum(-1, keepdim=True)) * attn.scaling
        if attention_mask is not None:
            row = attention_mask[:, :, 0]  # the [CLS] query's row of the (batch, 1, query, key) mask
            scores = scores.masked_fill(~row, float("-inf")) if row.dtype == torch.bool else scores + row
        probs = nn.functional.softmax(scores, dim=-1)
        probs = nn.functional.dropout(probs, p=attn.dropout.p, training=attn.training)
        mixed = torch.einsum("bhs,bsi->bhi", probs, hidden_states)
        w_value = attn.value.weight.view(heads, size, -1)
        out = torch.einsum("bhi,hdi->bhd", mixed, w_value) + attn.value.bias.view(heads, size) * probs.sum(-1, keepdim=True)
        attention_output = layer.attention.output(out.reshape(batch, 1, -1), cls)
        return layer.feed_forward_chunk(attention_output)  # per position: chunking changes nothing for one row
