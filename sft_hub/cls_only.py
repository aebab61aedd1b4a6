"""The frozen cache's last trained block computed for the [CLS] position only (issue 13, `partial`): exact, BERT only.

`BertForSequenceClassification` reads the encoder's output at position 0 only (its pooler takes
`hidden[:, 0]`, then dropout and the classifier). In the last encoder block every other position is dead
work: its keys and values still need every token (they come from the block below), but the query
projection, the attention over one query row, the attention output dense + LayerNorm and the feed-forward
(intermediate, output dense + LayerNorm) are needed for position 0 alone. `ClsOnlyLayer` runs the block
that way and returns a (batch, 1, hidden) tensor, which the pooler reads as before. It is used only in the
cached top's forward (`frozen_cache._top_forward`), where sft-hub owns the call, and only when `why_not`
finds the exact classes whose code it mirrors (transformers 5 `BertLayer`, eager or sdpa attention, no
decoder / cross-attention); anything else runs the whole block. In eval mode it gives the whole block's
logits and gradients (float rounding aside); in train mode its dropouts draw masks for row 0 only, so the
RNG stream differs from the whole block's: another, equally valid draw, not the same training.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.bert import modeling_bert as mb

ATTENTION = ("eager", "sdpa")  # the interfaces called here with one query row against all keys


def why_not(model: nn.Module, trunk: str, top: list[nn.Module]) -> str | None:
    """None when the last of `top` (blocks of `model.<trunk>`) may run for [CLS] only, else the reason."""
    if not top:
        return "no trained block"
    if type(model).forward is not mb.BertForSequenceClassification.forward or trunk != "bert.encoder.layer":
        return f"{type(model).__name__} is not BertForSequenceClassification"
    bert = model.bert
    if type(bert.pooler) is not mb.BertPooler or type(bert.encoder).forward is not mb.BertEncoder.forward:
        return "the pooler or the encoder is not BERT's own (one that reads position 0 only)"
    layer = top[-1]
    if (type(layer) is not mb.BertLayer or type(layer.attention) is not mb.BertAttention
            or type(layer.attention.self) is not mb.BertSelfAttention):
        return "the last block is not a BertLayer with BERT self-attention"
    if model.config.is_decoder or getattr(layer, "add_cross_attention", False):
        return "a decoder / cross-attention block"
    if model.config._attn_implementation not in ATTENTION:
        return f"attention implementation {model.config._attn_implementation!r}"
    return None


class ClsOnlyLayer(nn.Module):
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

    def __init__(self, layer: mb.BertLayer) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None, encoder_attention_mask: torch.Tensor | None = None,
                past_key_values: Any = None, **kwargs: Any) -> torch.Tensor:
        layer = self.layer
        odd_mask = attention_mask is not None and attention_mask.dim() != 4
        if getattr(layer, "gradient_checkpointing", False) and layer.training or past_key_values is not None or odd_mask:
            return layer(hidden_states, attention_mask, encoder_hidden_states, encoder_attention_mask=encoder_attention_mask,
                         past_key_values=past_key_values, **kwargs)  # what this form does not mirror: the whole block
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
