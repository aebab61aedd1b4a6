"""Audio clips for both audio tasks: checking every file, decoding through `datasets`' `Audio`, listing inputs.

Where the clips come from (Hub, audiofolder, file names): `audio_sources`; every source gives splits with an
`audio` column (`Audio(decode=False)`: a path or bytes, never decoded there). `check_files` opens every clip's
header once: an empty, unreadable or sample-less file is an error naming the file, or is skipped and counted
when `on_bad_file: skip`. `decode` turns one clip into mono float32 at the feature extractor's rate: torchcodec
(FFmpeg) decodes and resamples through `datasets.Audio(sampling_rate=...)`; channels are averaged.
"""

from __future__ import annotations

import io
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Audio, DatasetDict

from sft_hub.errors import DataError

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".aiff", ".aif", ".webm")
FFMPEG_HINT = "audio decoding needs torchcodec and FFmpeg: pip install 'sft-hub[audio]' and install FFmpeg (apt-get install ffmpeg)"
MAX_LISTED = 20  # skipped file names kept in the manifest's data_info


def _decoder_class():
    try:
        from torchcodec.decoders import AudioDecoder
    except (ImportError, RuntimeError, OSError) as exc:  # torchcodec raises RuntimeError when FFmpeg is missing
        raise DataError(f"{FFMPEG_HINT} ({str(exc).splitlines()[0][:200]})") from None
    return AudioDecoder


def name_of(value: Any) -> str:
    """A clip's name for messages: its path (embedded Hub audio may have none)."""
    if isinstance(value, dict):
        return value.get("path") or "<embedded audio bytes>"
    return str(getattr(getattr(value, "metadata", None), "path", None) or value)


def probe(value: dict) -> tuple[str | None, int | None, float | None]:
    """(problem or None, sampling rate, duration in s) from a clip's header, without decoding the samples.

    libsndfile reads WAV/FLAC/OGG/MP3 headers ~10x faster than opening an FFmpeg decoder; formats it does not
    know (or files it rejects) go to torchcodec, which has the last word, as it decodes them later.
    """
    path, data = value.get("path"), value.get("bytes")
    if data is None and path and os.path.isfile(path) and os.path.getsize(path) == 0 or data is not None and len(data) == 0:
        return "empty file (0 bytes)", None, None
    try:
        import soundfile

        info = soundfile.info(io.BytesIO(data) if data is not None else path)
        rate, duration = info.samplerate, info.frames / info.samplerate if info.samplerate else 0.0
    except Exception:
        try:
            meta = _decoder_class()(data if data is not None else path).metadata
        except DataError:
            raise
        except Exception as exc:
            return f"cannot decode: {_reason(exc, path)}", None, None
        rate = meta.sample_rate
        duration = meta.duration_seconds_from_header if meta.duration_seconds_from_header is not None else meta.duration_seconds
    if not rate:
        return "no sampling rate in the file's header", None, None
    if not duration or duration <= 0:
        return "no audio samples", int(rate), None
    return None, int(rate), float(duration)


def _reason(exc: Exception, path: str | None) -> str:
    """FFmpeg's own words, without torchcodec's source location or a repeat of the path."""
    text = re.sub(r"^.*?\.cpp:\d+, ", "", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return (text.replace(f": {path} ", ": ").replace(str(path), "") if path else text)[:200]


def check_files(splits: DatasetDict, on_bad_file: str, keep_seconds: bool = False) -> tuple[DatasetDict, dict[str, Any]]:
    """Open every clip's header once; raise on the first bad file, or drop bad files and count them.

    With `keep_seconds`, each clip's duration from its header stays as a `seconds` column (length filters).
    """
    def probe_batch(batch: dict) -> dict:
        found = [probe(v) for v in batch["audio"]]
        return {"_problem": [f[0] or "" for f in found], "_rate": [f[1] or 0 for f in found], "_seconds": [f[2] or 0.0 for f in found]}

    out, skipped, rates, seconds = {}, [], Counter(), []
    for name, ds in splits.items():
        probed = ds.map(probe_batch, batched=True, desc=f"checking audio files ({name})")
        bad = [i for i, p in enumerate(probed["_problem"]) if p]
        if bad and on_bad_file == "error":
            i = bad[0]
            more = f" ({len(bad) - 1} more bad files; data.on_bad_file: skip drops and counts them)" if len(bad) > 1 else " (data.on_bad_file: skip drops and counts such files)"
            raise DataError(f"audio file {name_of(ds[i]['audio'])} (split '{name}'): {probed[i]['_problem']}{more}")
        skipped += [f"{name_of(ds[i]['audio'])}: {probed[i]['_problem']}" for i in bad]
        keep = probed.filter(lambda p: not p, input_columns="_problem") if bad else probed
        rates.update(r for r in keep["_rate"])
        seconds += keep["_seconds"]
        keep = keep.remove_columns(["_problem", "_rate"])
        out[name] = keep.rename_column("_seconds", "seconds") if keep_seconds else keep.remove_columns("_seconds")
    info: dict[str, Any] = {"sampling_rates": {str(r): n for r, n in sorted(rates.items())}, "skipped_files": len(skipped)}
    if seconds:
        info["clip_seconds"] = {"min": round(min(seconds), 3), "mean": round(float(np.mean(seconds)), 3), "max": round(max(seconds), 3)}
    if skipped:
        info["skipped"] = skipped[:MAX_LISTED]
    return DatasetDict(out), info


def decode(value: Any, sampling_rate: int) -> tuple[np.ndarray, int]:
    """(mono float32 samples at `sampling_rate`, the file's own rate): FFmpeg resamples when they differ."""
    if isinstance(value, str):
        value = {"path": value, "bytes": None}
    fast = _decode_pcm16(value, sampling_rate)
    if fast is not None:
        return fast
    _decoder_class()
    try:
        audio = Audio(sampling_rate=sampling_rate).decode_example(value)
        array = audio["array"]  # datasets averages the channels: stereo -> mono
        source_rate = int(audio.metadata.sample_rate)
    except Exception as exc:
        raise DataError(f"audio file {name_of(value)}: cannot decode: {_reason(exc, value.get('path'))}") from None
    if array.size == 0:
        raise DataError(f"audio file {name_of(value)}: no audio samples")
    return np.asarray(array, dtype=np.float32), source_rate


def _decode_pcm16(value: dict, sampling_rate: int) -> tuple[np.ndarray, int] | None:
    """16-bit PCM WAV/FLAC already at `sampling_rate`, read by libsndfile: the samples FFmpeg gives (v / 32768, channels
    averaged the way `datasets` does), without opening an FFmpeg decoder per clip (~4 ms each). None: not such a file."""
    data, path = value.get("bytes"), value.get("path")
    if data is None and not (path and os.path.isfile(path)):
        return None
    try:
        import soundfile

        with soundfile.SoundFile(io.BytesIO(data) if data is not None else path) as f:
            if f.samplerate != sampling_rate or f.subtype != "PCM_16" or f.format not in ("WAV", "FLAC"):
                return None
            samples = f.read(dtype="float32", always_2d=True).T  # (channels, frames), as torchcodec returns them
    except Exception:  # torchcodec decides, and words the error
        return None
    if samples.shape[1] == 0:
        return None
    return np.asarray(np.mean(samples, axis=(0,)), dtype=np.float32), sampling_rate


def list_inputs(values: list[str], file: Path | None) -> list[str]:
    """Clip paths to predict: arguments (files or folders of audio files) and/or a text file listing one per line."""
    paths: list[Path] = [Path(v) for v in values]
    if file is not None:
        if not file.is_file():
            raise DataError(f"--file {file}: not found")
        lines = [ln.strip() for ln in file.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        paths += [p if p.is_absolute() else file.parent / p for p in map(Path, lines)]
    out = []
    for p in paths:
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in AUDIO_SUFFIXES)
            if not found:
                raise DataError(f"input {p}: folder holds no audio files ({', '.join(AUDIO_SUFFIXES)})")
            out += [str(f) for f in found]
        elif p.is_file():
            out.append(str(p))
        else:
            raise DataError(f"input {p}: audio file not found")
    for path in out:
        problem = probe({"path": path, "bytes": None})[0]
        if problem:
            raise DataError(f"audio file {path}: {problem}")
    return out
