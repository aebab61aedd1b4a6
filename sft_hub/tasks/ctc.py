"""CTC pieces of speech recognition: frames past a clip's end, the engine's loss, greedy decoding, WER / CER.

Frames: a batch of clips is padded to its longest; a CTC model outputs frames for the padding too. A forward
hook (`mark_padded_frames`) sets every logit of a frame past a clip's own end to -100, the value the Trainer
pads sequence outputs with across batches. The loss, the metrics and `predict` read a clip's frame count from
that mark alone, so the same logits mean the same thing in training, in evaluation and after a reload. Models
given no attention mask (wav2vec2-base style, group-norm feature encoders) use every frame, as transformers does.

Loss: CTC summed over the batch, divided by what `model.ctc_loss_normalization` says, counted over the whole
accumulated batch (and every process), so gradient accumulation and DDP are exact:
- `tokens` (default): the number of target characters (delimiters included): every character weighs the same,
  as a per-token mean; long utterances count in proportion to their length.
- `samples`: the number of utterances: every utterance's summed loss weighs the same (transformers'
  `ctc_loss_reduction: sum` scaled by the batch size).
`ctc_zero_infinity` (on by default) zeroes the loss of an utterance whose transcript cannot fit its frames.

Metrics: greedy decoding (argmax per frame, repeats collapsed, blanks dropped); WER and CER by jiwer against
the normalised transcripts, `ser` the fraction of utterances with any error, `num_examples`.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from transformers import EvalPrediction

from sft_hub.tasks.speech_data import BLANK_ID, ids_to_text

NO_FRAME = -100.0


def mark_padded_frames(net: torch.nn.Module) -> None:
    """Logits of frames past each clip's end (per the attention mask) become -100 (see the module docstring)."""
    lengths_of = getattr(net, "_get_feat_extract_output_lengths", None)

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        if mask is None or lengths_of is None:
            return output
        lengths = lengths_of(mask.sum(-1)).to(torch.long)
        logits = output.logits
        frames = torch.arange(logits.shape[1], device=logits.device)[None, :] < lengths.to(logits.device)[:, None]
        output.logits = logits.masked_fill(~frames[..., None], NO_FRAME)  # out of place: gradients flow
        return output

    net.register_forward_hook(hook, with_kwargs=True)


def make_ctc_loss(zero_infinity: bool, normalization: str) -> Callable:
    def loss_fn(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        frames = (logits != NO_FRAME).any(-1).sum(-1)
        targets = labels != -100
        target_lengths = targets.sum(-1)
        log_probs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)  # (time, batch, vocab)
        with torch.backends.cudnn.flags(enabled=False):  # cuDNN's CTC has extra limits (as transformers' ForCTCLoss)
            total = F.ctc_loss(log_probs, labels[targets], frames, target_lengths, blank=BLANK_ID,
                               reduction="sum", zero_infinity=zero_infinity)
        if num_items_in_batch is None:  # evaluation: this batch alone
            num_items_in_batch = target_lengths.sum() if normalization == "tokens" else labels.shape[0]
        return total / num_items_in_batch

    loss_fn.counts = "labels" if normalization == "tokens" else "rows"  # what the engine's Trainer counts (sampling.py)
    return loss_fn


def frame_ids(predictions: Any) -> np.ndarray:
    """[N, T] argmax ids, -100 where no frame; from [N, T, V] logits or from ids already reduced."""
    p = predictions[0] if isinstance(predictions, (tuple, list)) else predictions
    p = np.asarray(p)
    if p.ndim == 3:
        ids = p.argmax(-1)
        ids[(p == NO_FRAME).all(-1)] = -100
        return ids
    return p


def preprocess_logits_for_metrics(logits: Any, labels: Any) -> torch.Tensor:
    """Evaluation keeps argmax ids, not [batch, frames, vocab] logits (memory over a whole eval split)."""
    logits = logits[0] if isinstance(logits, (tuple, list)) else logits
    ids = logits.argmax(-1)
    return ids.masked_fill((logits == NO_FRAME).all(-1), -100)


def greedy_decode(ids: np.ndarray, vocab: list[str], delimiter: str) -> str:
    ids = ids[ids != -100]
    if ids.size:
        ids = ids[np.r_[True, ids[1:] != ids[:-1]]]  # collapse repeats, then drop blanks
    return " ".join(ids_to_text(ids[ids != BLANK_ID], vocab, delimiter).split())


def transcripts(predictions: Any, vocab: list[str], delimiter: str) -> list[str]:
    return [greedy_decode(row, vocab, delimiter) for row in frame_ids(predictions)]


def error_rates(references: list[str], hypotheses: list[str]) -> dict[str, float]:
    import jiwer

    return {"wer": float(jiwer.wer(references, hypotheses)), "cer": float(jiwer.cer(references, hypotheses)),
            "ser": float(np.mean([r != h for r, h in zip(references, hypotheses)]))}


def make_compute_metrics(vocab: list[str], delimiter: str) -> Callable[[EvalPrediction], dict[str, float]]:
    def compute(eval_pred: EvalPrediction) -> dict[str, float]:
        hypotheses = transcripts(eval_pred.predictions, vocab, delimiter)
        references = [ids_to_text(row[row != -100], vocab, delimiter) for row in np.asarray(eval_pred.label_ids)]
        return {**error_rates(references, hypotheses), "num_examples": len(references)}

    return compute
