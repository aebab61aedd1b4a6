"""Build the small text bases `sft-hub select`'s SST-2 proof compares, offline, from the embedded MiniLM:

- `<out>/minilm-L3`: all-MiniLM-L6-v2 truncated to its first N layers (default 3), weights copied as they are;
- `<out>/tiny-bert`: a 2-layer, 128-wide BERT with random weights (seeded) and MiniLM's tokenizer, the size of
  the tiny models the tests build: a from-scratch baseline that a pretrained base should beat.

    python scripts/build_small_bases.py [--out runs/bases] [--layers 3]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel

    from sft_hub.base_model import resolve_source

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bases")
    p.add_argument("--layers", type=int, default=3)
    a = p.parse_args()
    source = resolve_source("embedded/all-MiniLM-L6-v2")
    tok = AutoTokenizer.from_pretrained(source)
    out = Path(a.out)

    model = AutoModel.from_pretrained(source)
    model.encoder.layer = model.encoder.layer[: a.layers]  # keep the bottom layers, as trained
    model.config.num_hidden_layers = a.layers
    target = out / f"minilm-L{a.layers}"
    model.save_pretrained(target, safe_serialization=True)
    tok.save_pretrained(target)
    print(f"{target}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters ({a.layers} of 6 MiniLM layers)")

    torch.manual_seed(0)
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=256, max_position_embeddings=512)
    tiny = BertModel(config)
    target = out / "tiny-bert"
    tiny.save_pretrained(target, safe_serialization=True)
    tok.save_pretrained(target)
    print(f"{target}: {sum(p.numel() for p in tiny.parameters()) / 1e6:.1f}M parameters (random, seed 0)")


if __name__ == "__main__":
    main()
