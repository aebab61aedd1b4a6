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
    out = {}
    for split, f in files.items():  # one file at a time, so an error names the file at fault
        try:
            out[split] = load_dataset(builder, data_files={split: f}, split=split, **kwargs)
        except Exception as exc:  # parser errors: the parser's own line/row message
            cause = exc.__cause__ or exc.__context__
            msg = str(cause if cause is not None and str(cause) else exc).strip().splitlines()
            text = msg[-1] if msg else type(exc).__name__
            if "corresponds to no data" in text:
                raise DataError(f"data: split {split!r} is empty (file {f} has no rows)") from None
            raise DataError(f"data.data_files.{split}: cannot read {f} as {kind}: {text}") from None
        if len(out[split]) == 0:
            raise DataError(f"data: split {split!r} is empty (file {f})")
    return DatasetDict(out)
