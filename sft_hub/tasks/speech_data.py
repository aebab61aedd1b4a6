"""Speech recognition data: transcript sources, text normalisation, and the character vocabulary.

Sources (one per recipe), each giving splits with an `audio` column (`Audio(decode=False)`) and a `raw_text`
column: a Hub dataset (`audio_column`, `text_column`), a local `audiofolder` whose metadata file
(metadata.csv / .jsonl, one row per `file_name`) holds the transcripts, or a folder of files whose
transcript comes from the file name (`transcript_regex`, optionally mapped through `transcript_map`:
FSDD's `7_jackson_3.wav` -> "7" -> "seven").

Transcripts are normalised as the recipe says (case, characters to drop, whitespace collapsed); one that is
empty afterwards is an error naming the split, row and file. The vocabulary is built from the normalised
training transcripts only: `[PAD]` (id 0, also the CTC blank), `[UNK]`, the word delimiter (`|`, standing for
a space), then every character seen, sorted. It is the run's label list, saved as a `Wav2Vec2CTCTokenizer`.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from datasets import Audio, Dataset, DatasetDict, load_dataset

from sft_hub.errors import DataError
from sft_hub.tasks.audio_data import _existing_dir, name_of

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


def from_hub(data: Any) -> DatasetDict:
    try:
        raw = load_dataset(data.dataset, data.dataset_config, data_dir=data.data_dir, revision=data.dataset_revision)
    except Exception as exc:  # offline, unknown id, script datasets: one line naming the dataset
        raise DataError(f"data.dataset: cannot load {data.dataset!r}: {str(exc).splitlines()[0]}") from None
    return _select_columns(raw, data, f"dataset {data.dataset}")


def from_audiofolder(data: Any) -> DatasetDict:
    folder = _existing_dir(data.data_dir)
    try:
        raw = load_dataset("audiofolder", data_dir=str(folder))
    except Exception as exc:
        raise DataError(f"data.data_dir: cannot read {folder} as an audiofolder: {str(exc).splitlines()[0]}") from None
    return _select_columns(raw, data, f"audiofolder {folder} (transcripts come from its metadata.csv/.jsonl)")


def _select_columns(raw: DatasetDict, data: Any, origin: str) -> DatasetDict:
    out = {}
    for split, ds in raw.items():
        for col, key in ((data.audio_column, "audio_column"), (data.text_column, "text_column")):
            if col not in ds.column_names:
                raise DataError(f"data.{key}: column {col!r} not in {origin} split '{split}'; columns are {', '.join(ds.column_names)}")
        ds = ds.select_columns([data.audio_column, data.text_column])
        ds = ds.rename_columns({data.audio_column: "audio", data.text_column: "raw_text"})
        if not isinstance(ds.features["audio"], Audio):
            raise DataError(f"data.audio_column: column {data.audio_column!r} of {origin} holds {ds.features['audio']}, not audio")
        out[split] = ds.cast_column("audio", Audio(decode=False))
    return DatasetDict(out)


def from_filenames(data: Any, train_split: str) -> DatasetDict:
    """Files under data_dir matching `file_glob`; transcript from `transcript_regex` (+ map), split from `split_regex`."""
    folder = _existing_dir(data.data_dir)
    files = sorted(p for p in folder.glob(data.file_glob) if p.is_file())
    if not files:
        raise DataError(f"data.file_glob: no files match {data.file_glob!r} in {folder}")
    text_re = re.compile(data.transcript_regex)
    split_res = {name: re.compile(rx) for name, rx in (data.split_regex or {}).items()}
    mapping = data.transcript_map
    rows: dict[str, dict[str, list]] = {}
    for path in files:
        match = text_re.search(path.name)
        if not match:
            raise DataError(f"data.transcript_regex: file {path} does not match {data.transcript_regex!r}")
        value = match.group("text") if "text" in text_re.groupindex else match.group(1 if text_re.groups else 0)
        if mapping is not None:
            if value not in mapping:
                raise DataError(f"data.transcript_map: no entry for {value!r} (from file {path}); keys are {', '.join(mapping)}")
            value = mapping[value]
        splits = [name for name, rx in split_res.items() if rx.search(path.name)]
        if len(splits) > 1:
            raise DataError(f"data.split_regex: file {path} matches the patterns of several splits ({', '.join(splits)})")
        split = rows.setdefault(splits[0] if splits else train_split, {"audio": [], "raw_text": []})
        split["audio"].append(str(path.resolve()))
        split["raw_text"].append(value)
    for name in split_res:
        if name not in rows:
            raise DataError(f"data.split_regex.{name}: no file in {folder} matches {data.split_regex[name]!r}")
    return DatasetDict({name: Dataset.from_dict(cols).cast_column("audio", Audio(decode=False)) for name, cols in rows.items()})


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
