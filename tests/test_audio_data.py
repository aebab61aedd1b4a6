"""Audio data: the filenames / audiofolder / Hub sources, file checks (corrupt, empty, sample-less), decoding
(stereo to mono, resampling through `datasets.Audio`), prediction inputs, and FSDD's own split when present.

Offline: WAV fixtures generated in tmp_path (8 and 16 kHz, mono and stereo); see test_audio_task for helpers.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sft_hub.config import from_dict, load_recipe
from sft_hub.errors import DataError
from sft_hub.tasks import audio, audio_data
from audio_fixtures import BAD, FSDD, FSDD_RECIPE, TONES, data_cfg, make_clips, model_cfg, write_wav


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    return make_clips(tmp_path_factory.mktemp("clips"))


# --- data sources and file checks -------------------------------------------------------------------

def test_filenames_source_uses_the_split_pattern_and_counts_rates(clips: Path) -> None:
    data = audio.load_data(data_cfg(clips), seed=0)
    assert (data.train_split, data.eval_splits, data.labels) == ("train", ["test"], ["1", "7"])
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 10, "test": 10}
    test_names = {Path(v["path"]).name for v in data.splits["test"]["audio"]}
    assert all(re.search(r"_[0-4]\.wav$", n) for n in test_names)
    assert data.info["sampling_rates"] == {"8000": 10, "16000": 10} and data.info["skipped_files"] == 0


def test_file_name_not_matching_the_label_pattern_is_named(tmp_path: Path) -> None:
    make_clips(tmp_path, per_class=2)
    write_wav(tmp_path / "noise.wav", 8000, 0.2, 500)
    with pytest.raises(DataError, match=r"data.label_regex: file .*noise.wav does not match"):
        audio.load_data(data_cfg(tmp_path, split_regex=None, validation_fraction=0.5), seed=0)


@pytest.mark.parametrize("name, problem", [("1_tone_98.wav", "cannot decode: Could not open input file: Invalid data found when processing input"), ("7_tone_99.wav", r"empty file \(0 bytes\)"),
                                           ("7_tone_97.wav", "no audio samples")])
def test_bad_file_is_an_error_naming_it(tmp_path: Path, name: str, problem: str) -> None:
    make_clips(tmp_path, per_class=6)
    BAD[name](tmp_path / name)
    with pytest.raises(DataError, match=rf"audio file .*{name} \(split 'train'\): {problem} \(data.on_bad_file: skip"):
        audio.load_data(data_cfg(tmp_path), seed=0)


def test_bad_files_skipped_and_counted_when_asked(tmp_path: Path) -> None:
    make_clips(tmp_path, per_class=6, bad=True)
    with pytest.raises(DataError, match=r"\(2 more bad files; data.on_bad_file: skip drops and counts them\)"):
        audio.load_data(data_cfg(tmp_path), seed=0)
    data = audio.load_data(data_cfg(tmp_path, on_bad_file="skip"), seed=0)
    assert data.info["skipped_files"] == 3 and len(data.splits["train"]) == 2
    assert sorted(Path(s.split(":")[0]).name for s in data.info["skipped"]) == sorted(BAD)


def test_audiofolder_class_folders_and_metadata(tmp_path: Path) -> None:
    for split, n in (("train", 3), ("test", 2)):
        for name, freq in (("down", 200.0), ("up", 900.0)):
            for i in range(n):
                write_wav(tmp_path / "folders" / split / name / f"{i}.wav", 16000, 0.2, freq, seed=i)
    data = audio.load_data(from_dict(audio.DataConfig, {"source": "audiofolder", "data_dir": str(tmp_path / "folders")}, "data"), 0)
    assert data.labels == ["down", "up"] and {k: len(v) for k, v in data.splits.items()} == {"train": 6, "test": 4}

    meta = tmp_path / "meta"
    rows = ["file_name,word"] + [f"c{i}.wav,{'yes' if i % 2 else 'no'}" for i in range(6)]
    for i in range(6):
        write_wav(meta / f"c{i}.wav", 8000, 0.2, 300.0 + 100 * i, seed=i)
    (meta / "metadata.csv").write_text("\n".join(rows) + "\n")
    cfg = from_dict(audio.DataConfig, {"source": "audiofolder", "data_dir": str(meta), "label_column": "word", "validation_fraction": 0.5}, "data")
    data = audio.load_data(cfg, 0)
    assert data.labels == ["no", "yes"] and data.eval_splits == ["validation"] and len(data.splits["validation"]) == 3
    with pytest.raises(DataError, match="data.label_column: column 'label' not in audiofolder"):
        audio.load_data(from_dict(audio.DataConfig, {"source": "audiofolder", "data_dir": str(meta)}, "data"), 0)


def test_hub_style_dataset_with_embedded_audio_bytes(clips: Path, tmp_path: Path) -> None:
    """A dataset repository layout (Parquet with audio bytes inside, ClassLabel labels), read offline from a folder."""
    from datasets import Audio, ClassLabel, Dataset, Features, Value

    features = Features({"speech": Audio(), "word": ClassLabel(names=["one", "seven"]), "speaker": Value("string")})
    for split, indices in (("train", range(5, 10)), ("test", range(5))):
        rows = [{"speech": {"bytes": (clips / f"{d}_tone_{i}.wav").read_bytes(), "path": f"{d}_tone_{i}.wav"}, "word": int(d == "7"), "speaker": "t"}
                for d in TONES for i in indices]
        (tmp_path / "repo" / "data").mkdir(parents=True, exist_ok=True)
        Dataset.from_list(rows, features=features).to_parquet(tmp_path / "repo" / "data" / f"{split}-00000-of-00001.parquet")
    cfg = from_dict(audio.DataConfig, {"dataset": str(tmp_path / "repo"), "audio_column": "speech", "label_column": "word"}, "data")
    data = audio.load_data(cfg, 0)
    assert data.labels == ["one", "seven"] and {k: len(v) for k, v in data.splits.items()} == {"train": 10, "test": 10}
    assert data.splits["train"][0]["audio"]["bytes"] and data.info["sampling_rates"] == {"8000": 10, "16000": 10}
    fe = audio.load_processor(model_cfg("ast"))
    enc = audio.encode(data.splits, fe, cfg, model_cfg("ast"), "train")
    assert enc["test"][0]["input_values"].shape == (32, 16)
    with pytest.raises(DataError, match="data.label_column: column 'label' not in dataset"):
        audio.load_data(from_dict(audio.DataConfig, {"dataset": str(tmp_path / "repo"), "audio_column": "speech"}, "data"), 0)


def test_missing_data_dir_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data.data_dir: folder .*nowhere not found"):
        audio.load_data(data_cfg(tmp_path / "nowhere"), 0)


# --- decoding, features, collator ----------------------------------------------------------------------

def test_decode_downmixes_stereo_and_resamples(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "s.wav", 8000, 0.5, 440.0, channels=2)
    stereo, rate = sf.read(path, dtype="float32")
    wave, source = audio_data.decode(str(path), 8000)
    assert source == 8000 and wave.ndim == 1 and wave.dtype == np.float32
    np.testing.assert_allclose(wave, stereo.mean(axis=1), atol=1e-4)  # channels averaged
    up, source = audio_data.decode(str(path), 16000)
    assert source == 8000 and abs(len(up) - 2 * len(wave)) <= 32
    peak = np.argmax(np.abs(np.fft.rfft(up))) * 16000 / len(up)
    assert abs(peak - 440.0) < 5  # the tone survives resampling


def test_predict_inputs_are_listed_and_checked(clips: Path, tmp_path: Path) -> None:
    data_c = data_cfg(clips)
    listing = tmp_path / "inputs.txt"
    listing.write_text(f"# clips\n{clips / '1_tone_0.wav'}\n")
    rows = audio.read_inputs(data_c, [str(clips / "7_tone_1.wav")], listing)
    assert [audio.describe_input(r) for r in rows] == [str(clips / "7_tone_1.wav"), str(clips / "1_tone_0.wav")]
    assert len(audio.read_inputs(data_c, [str(clips)], None)) == 20
    with pytest.raises(DataError, match=r"input .*missing.wav: audio file not found"):
        audio.read_inputs(data_c, [str(tmp_path / "missing.wav")], None)
    (tmp_path / "broken.wav").write_bytes(b"not audio at all" * 4)
    with pytest.raises(DataError, match=r"audio file .*broken.wav: cannot decode"):
        audio.read_inputs(data_c, [str(tmp_path / "broken.wav")], None)


# --- the reference data, when present ----------------------------------------------------------------------

@pytest.mark.skipif(not FSDD.is_dir(), reason=f"FSDD recordings not found at {FSDD}")
def test_fsdd_recipe_data_uses_the_datasets_own_split() -> None:
    recipe = load_recipe(FSDD_RECIPE, [f"data.data_dir={FSDD}"])
    data = audio.load_data(recipe.data, 42)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 2700, "test": 300}
    assert data.labels == [str(d) for d in range(10)] and data.info["sampling_rates"] == {"8000": 3000}
    assert all(int(Path(v["path"]).stem.rsplit("_", 1)[1]) <= 4 for v in data.splits["test"]["audio"])
