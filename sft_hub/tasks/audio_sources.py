"""Where an audio recipe's clips come from, for both audio tasks (classification and speech recognition).

Sources (one per recipe): a Hub dataset, a local `audiofolder` (class folders or a metadata file), or a
folder of files whose target is in the file name (a regex, optionally mapped through a table) with splits
chosen by `split_regex`. Every source becomes splits with an `audio` column (`Audio(decode=False)`: a path or
bytes, never decoded here) and the task's raw target column. A `Target` says which config keys name that
target for a task (`LABEL` for classification; speech recognition defines its transcripts in `speech_data`),
so both tasks read and check their sources through the same code. Checking and decoding clips: `audio_data`.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Audio, Dataset, DatasetDict, load_dataset

from sft_hub.errors import ConfigError, DataError


@dataclass(frozen=True)
class Target:
    """What each clip is labelled with, by the names a task's DataConfig and its splits use."""
    column_key: str  # config key naming the Hub / audiofolder column (label_column, text_column)
    regex_key: str  # config key of the file-name pattern of source filenames (label_regex, transcript_regex)
    group: str  # the pattern's named group holding the value (else group 1, else the whole match)
    column: str  # the split column the value lands in (raw_label, raw_text)
    regex_example: str  # shown when the pattern is missing
    map_key: str | None = None  # config key of a table mapping matched values (transcript_map)
    audiofolder_note: str = ""  # where an audiofolder keeps the values, for error messages


LABEL = Target("label_column", "label_regex", "label", "raw_label", "'^(\\d+)_' for '7_jackson_3.wav'")


def check_source(data: Any, where: str, target: Target) -> None:
    """The data-section checks every audio task shares: one source, its folder, the file-name fields
    (required with source filenames, unused otherwise, patterns compiling), max_duration, validation_fraction."""
    sources = [k for k in ("dataset", "source") if getattr(data, k)]
    if len(sources) != 1:
        raise ConfigError(f"{where}: give exactly one of dataset or source (got {sources or 'none'})")
    if data.source and not data.data_dir:
        raise ConfigError(f"{where}.data_dir: required with source {data.source} (the folder of audio files)")
    if data.source == "filenames" and not getattr(data, target.regex_key):
        raise ConfigError(f"{where}.{target.regex_key}: required with source filenames, e.g. {target.regex_example}")
    if data.source != "filenames":
        for key in (target.regex_key, *([target.map_key] if target.map_key else []), "split_regex"):
            if getattr(data, key):
                raise ConfigError(f"{where}.{key}: only used with source filenames")
    _check_patterns(data, where, target)
    if data.max_duration is not None and data.max_duration <= 0:
        raise ConfigError(f"{where}.max_duration: must be > 0 seconds, got {data.max_duration}")
    if data.validation_fraction is not None and not 0 < data.validation_fraction < 1:
        raise ConfigError(f"{where}.validation_fraction: must be between 0 and 1, got {data.validation_fraction}")


def _check_patterns(data: Any, where: str, target: Target) -> None:
    """Every regular expression of a filenames source compiles (a config error naming the field otherwise)."""
    patterns = {target.regex_key: getattr(data, target.regex_key), **{f"split_regex.{k}": v for k, v in (data.split_regex or {}).items()}}
    for key, pattern in patterns.items():
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"{where}.{key}: invalid regular expression {pattern!r}: {exc}") from None


def read(data: Any, target: Target) -> DatasetDict:
    """The recipe's one source (checked by `check_source`) as splits with `audio` and `target.column`."""
    if data.dataset:
        return from_hub(data, target)
    if data.source == "audiofolder":
        return from_audiofolder(data, target)
    return from_filenames(data, data.train_split, target)


def from_hub(data: Any, target: Target) -> DatasetDict:
    try:
        raw = load_dataset(data.dataset, data.dataset_config, data_dir=data.data_dir, revision=data.dataset_revision)
    except Exception as exc:  # offline, unknown id, script datasets: one line naming the dataset
        raise DataError(f"data.dataset: cannot load {data.dataset!r}: {str(exc).splitlines()[0]}") from None
    return _select_columns(raw, data, target, f"dataset {data.dataset}")


def from_audiofolder(data: Any, target: Target) -> DatasetDict:
    folder = _existing_dir(data.data_dir)
    try:
        raw = load_dataset("audiofolder", data_dir=str(folder))
    except Exception as exc:
        raise DataError(f"data.data_dir: cannot read {folder} as an audiofolder: {str(exc).splitlines()[0]}") from None
    return _select_columns(raw, data, target, f"audiofolder {folder}{target.audiofolder_note}")


def from_filenames(data: Any, train_split: str, target: Target) -> DatasetDict:
    """Files under data_dir matching `file_glob`; value from the target's regex (+ map), split from `split_regex` (else train)."""
    folder = _existing_dir(data.data_dir)
    # strings sorted part by part (as Path sorts them): comparing Path objects cost ~1 ms a file on a busy machine
    files = [Path(f) for f in sorted(glob.glob(os.path.join(glob.escape(str(folder)), data.file_glob), recursive=True), key=lambda f: f.split(os.sep)) if os.path.isfile(f)]
    if not files:
        raise DataError(f"data.file_glob: no files match {data.file_glob!r} in {folder}")
    pattern = getattr(data, target.regex_key)
    value_re = re.compile(pattern)
    split_res = {name: re.compile(rx) for name, rx in (data.split_regex or {}).items()}
    mapping = getattr(data, target.map_key) if target.map_key else None
    rows: dict[str, dict[str, list]] = {}
    for path in files:
        match = value_re.search(path.name)
        if not match:
            raise DataError(f"data.{target.regex_key}: file {path} does not match {pattern!r}")
        value = match.group(target.group) if target.group in value_re.groupindex else match.group(1 if value_re.groups else 0)
        if mapping is not None:
            if value not in mapping:
                raise DataError(f"data.{target.map_key}: no entry for {value!r} (from file {path}); keys are {', '.join(mapping)}")
            value = mapping[value]
        splits = [name for name, rx in split_res.items() if rx.search(path.name)]
        if len(splits) > 1:
            raise DataError(f"data.split_regex: file {path} matches the patterns of several splits ({', '.join(splits)})")
        split = rows.setdefault(splits[0] if splits else train_split, {"audio": [], target.column: []})
        split["audio"].append(str(path.resolve()))
        split[target.column].append(value)
    for name in split_res:
        if name not in rows:
            raise DataError(f"data.split_regex.{name}: no file in {folder} matches {data.split_regex[name]!r}")
    return DatasetDict({name: Dataset.from_dict(cols).cast_column("audio", Audio(decode=False)) for name, cols in rows.items()})


def _existing_dir(path: str | None) -> Path:
    folder = Path(path or "")
    if not path or not folder.is_dir():
        raise DataError(f"data.data_dir: folder {path} not found")
    return folder


def _select_columns(raw: DatasetDict, data: Any, target: Target, origin: str) -> DatasetDict:
    value_column = getattr(data, target.column_key)
    out = {}
    for split, ds in raw.items():
        for col, key in ((data.audio_column, "audio_column"), (value_column, target.column_key)):
            if col not in ds.column_names:
                raise DataError(f"data.{key}: column {col!r} not in {origin} split '{split}'; columns are {', '.join(ds.column_names)}")
        ds = ds.select_columns([data.audio_column, value_column])
        ds = ds.rename_columns({data.audio_column: "audio", value_column: target.column})
        if not isinstance(ds.features["audio"], Audio):
            raise DataError(f"data.audio_column: column {data.audio_column!r} of {origin} holds {ds.features['audio']}, not audio")
        out[split] = ds.cast_column("audio", Audio(decode=False))
    return DatasetDict(out)
