"""Reading the user's own table files (CSV / TSV / JSON / JSONL) through `datasets`' builders."""

from __future__ import annotations

from pathlib import Path

from datasets import DatasetDict, load_dataset

from sft_hub.errors import DataError

BUILDERS = {"csv": ("csv", {}), "tsv": ("csv", {"sep": "\t"}), "json": ("json", {}), "jsonl": ("json", {})}


def load_files(kind: str, files: dict[str, str]) -> DatasetDict:
    if kind not in BUILDERS:
        raise DataError(f"file type {kind!r} not supported; use one of {', '.join(BUILDERS)}")
    for split, f in files.items():
        if not Path(f).is_file():
            raise DataError(f"data.data_files.{split}: file {f} not found")
        if Path(f).stat().st_size == 0:
            raise DataError(f"data.data_files.{split}: file {f} is empty")
    builder, kwargs = BUILDERS[kind]
    if builder == "csv":
        kwargs = {**kwargs, "keep_default_na": False}
    try:
        return load_dataset(builder, data_files=dict(files), **kwargs)
    except Exception as exc:  # parser errors: name the files and the parser's own line/row message
        msg = str(exc).splitlines()[-1] if str(exc) else type(exc).__name__
        cause = exc.__cause__ or exc.__context__
        if cause is not None and str(cause):
            msg = str(cause).splitlines()[-1]
        raise DataError(f"data files {', '.join(files.values())}: cannot read as {kind}: {msg}") from None
