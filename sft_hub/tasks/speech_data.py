"""Speech recognition data: transcript sources, text normalisation, and the character vocabulary.

Sources (one per recipe, read by `audio_sources` with the `TEXT` target), each giving splits with an `audio`
column (`Audio(decode=False)`) and a `raw_text` column: a Hub dataset (`audio_column`, `text_column`), a local
`audiofolder` whose metadata file (metadata.csv / .jsonl, one row per `file_name`) holds the transcripts, or a
folder of files whose transcript comes from the file name (`transcript_regex`, optionally mapped through
`transcript_map`: FSDD's `7_jackson_3.wav` -> "7" -> "seven").

Transcripts are normalised as the recipe says (case, characters to drop, whitespace collapsed); one that is
empty afterwards is an error naming the split, row and file. The vocabulary is built from the normalised
training transcripts only: `[PAD]` (id 0, also the CTC blank), `[UNK]`, the word delimiter (`|`, standing for
a space), then every character seen, sorted. It is the run's label list, saved as a `Wav2Vec2CTCTokenizer`.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from datasets import DatasetDict

from sft_hub.errors import DataError
from sft_hub.tasks.audio_data import name_of
from sft_hub.tasks.audio_sources import Target

TEXT = Target("text_column", "transcript_regex", "text", "raw_text", "'^(\\d)_' with a transcript_map", map_key="transcript_map",
              audiofolder_note=" (transcripts come from its metadata.csv/.jsonl)")
PAD, UNK = "[PAD]", "[UNK]"
BLANK_ID = 0  # [PAD] doubles as the CTC blank, as in transformers' wav2vec2 CTC models (pad_token_id)


def normalise(text: str, case: str, chars_to_ignore: str) -> str:
    """Case as asked, every character of `chars_to_ignore` removed, runs of whitespace as one space."""
    if case == "lower":
        text = text.lower()
    elif case == "upper":
        text = text.upper()
    if chars_to_ignore:
        text = text.translate({ord(c): None for c in chars_to_ignore})
    return " ".join(text.split())


def build_vocabulary(texts: list[str], delimiter: str) -> list[str]:
    chars = sorted(set("".join(texts)) - {" "})
    return [PAD, UNK, delimiter, *(c for c in chars if c != delimiter)]


def text_to_ids(text: str, index: dict[str, int], delimiter: str) -> list[int]:
    """Character ids as `Wav2Vec2CTCTokenizer` gives them: a space is the delimiter, unseen characters are [UNK]."""
    unk = index[UNK]
    return [index.get(delimiter if c == " " else c, unk) for c in text]


def ids_to_text(ids: Any, vocab: list[str], delimiter: str) -> str:
    return "".join(vocab[int(i)] for i in ids).replace(delimiter, " ").strip()


def make_tokenizer(vocab: list[str], delimiter: str) -> Any:
    """A `Wav2Vec2CTCTokenizer` over exactly `vocab` (no <s>/</s> added: the model's outputs are the vocabulary)."""
    from transformers import Wav2Vec2CTCTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vocab.json"
        path.write_text(json.dumps({token: i for i, token in enumerate(vocab)}, ensure_ascii=False))
        return Wav2Vec2CTCTokenizer(str(path), unk_token=UNK, pad_token=PAD, word_delimiter_token=delimiter,
                                    bos_token=None, eos_token=None, do_lower_case=False)


def normalise_splits(splits: DatasetDict, data: Any) -> DatasetDict:
    """raw_text -> text (normalised); an empty or missing transcript is an error naming split, row and file."""
    out = {}
    for name, ds in splits.items():
        texts = [normalise(t, data.text_case, data.chars_to_ignore) if isinstance(t, str) else "" for t in ds["raw_text"]]
        empty = [i for i, t in enumerate(texts) if not t]
        if empty:
            i = empty[0]
            more = f" ({len(empty) - 1} more)" if len(empty) > 1 else ""
            raise DataError(f"data.text_column: empty transcript in split {name!r} row {i} (audio {name_of(ds[i]['audio'])}, "
                            f"transcript {ds[i]['raw_text']!r} after normalisation){more}")
        out[name] = ds.remove_columns("raw_text").add_column("text", texts)
    return DatasetDict(out)


def drop_long(splits: DatasetDict, train: str, max_duration: float | None) -> tuple[DatasetDict, int]:
    """Training clips longer than `max_duration` seconds dropped (evaluation keeps every clip); returns the count."""
    out = {name: ds for name, ds in splits.items()}
    dropped = 0
    if max_duration is not None:
        before = len(out[train])
        out[train] = out[train].filter(lambda s: s <= max_duration, input_columns="seconds")
        dropped = before - len(out[train])
        if len(out[train]) == 0:
            raise DataError(f"data.max_duration: every training clip is longer than {max_duration} s")
    return DatasetDict({name: ds.remove_columns("seconds") for name, ds in out.items()}), dropped


def add_label_ids(splits: DatasetDict, vocab: list[str], delimiter: str) -> tuple[DatasetDict, dict[str, int]]:
    """text -> labels (character ids); returns the count of characters unseen in training, per eval split."""
    index = {token: i for i, token in enumerate(vocab)}
    unseen: dict[str, int] = {}
    out = {}
    for name, ds in splits.items():
        counts = Counter(c for t in ds["text"] for c in t if c != " " and c not in index)
        if counts:
            unseen[name] = sum(counts.values())
        out[name] = ds.map(lambda t: {"labels": text_to_ids(t, index, delimiter)}, input_columns="text")
    return DatasetDict(out), unseen
