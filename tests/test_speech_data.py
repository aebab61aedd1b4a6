"""Speech recognition data: transcript sources, normalisation, vocabulary, tokenizer, collator, decoding and metrics.

Offline: WAV clips generated in tmp_path, one tone or noise clip per "word" (FSDD-style file names, an
audiofolder with a metadata.csv of transcripts, and the same folder read as a Hub-style dataset path).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from sft_hub.strategies import parse_strategy
import soundfile as sf
import torch

from sft_hub.config import from_dict, load_recipe
from sft_hub.errors import ConfigError, DataError
from sft_hub.tasks import ctc, speech, speech_data

ROOT = Path(__file__).resolve().parents[1]
FSDD_ASR = ROOT / "recipes" / "speech_recognition" / "fsdd_wav2vec2_scratch_full.yaml"
WORDS = {"1": ("one", 300.0), "7": ("seven", None)}  # digit -> (word, tone frequency; None: white noise)
MAP = {digit: word for digit, (word, _) in WORDS.items()}
TINY_CTC = {"conv_dim": [16, 16], "conv_stride": [5, 4], "conv_kernel": [10, 4], "feat_extract_norm": "layer",
            "do_stable_layer_norm": True, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 64, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2, "mask_time_prob": 0.0,
            "layerdrop": 0.0, "hidden_dropout": 0.0, "activation_dropout": 0.0, "attention_dropout": 0.0,
            "feat_proj_dropout": 0.0, "final_dropout": 0.0}


def write_clip(path: Path, digit: str, seconds: float, seed: int, rate: int = 8000) -> Path:
    rng = np.random.default_rng(seed)
    freq = WORDS[digit][1]
    t = np.arange(int(rate * seconds)) / rate
    wave = 0.5 * np.sin(2 * np.pi * freq * t) if freq else 0.3 * rng.standard_normal(t.size)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (wave + 0.01 * rng.standard_normal(t.size)).astype(np.float32), rate, subtype="PCM_16")
    return path


def make_word_clips(root: Path, per_word: int = 10) -> Path:
    """`{digit}_tone_{i}.wav`, i 0-4 test, the rest train; lengths vary (0.15-0.4 s) so batches need padding."""
    for digit in WORDS:
        for i in range(per_word):
            write_clip(root / f"{digit}_tone_{i}.wav", digit, 0.15 + 0.05 * (i % 6), seed=i)
    return root


def data_cfg(folder: Path, **kw) -> speech.DataConfig:
    raw = {"source": "filenames", "data_dir": str(folder), "transcript_regex": r"^(\d)_", "transcript_map": dict(MAP),
           "split_regex": {"test": r"_[0-4]\.wav$"}, **kw}
    return from_dict(speech.DataConfig, raw, "data")


def model_cfg(**kw) -> speech.ModelConfig:
    raw = {"name_or_path": "wav2vec2", "config": dict(TINY_CTC), "feature_extractor": {"sampling_rate": 8000, "return_attention_mask": True}, **kw}
    return from_dict(speech.ModelConfig, raw, "model")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    return make_word_clips(tmp_path_factory.mktemp("words"))


def test_normalisation_and_vocabulary_from_training_transcripts_only() -> None:
    assert speech_data.normalise("  Hello,  WORLD!\tOK ", "lower", ",!") == "hello world ok"
    assert speech_data.normalise("it's", "upper", "") == "IT'S"
    vocab = speech_data.build_vocabulary(["zero one", "one"], "|")
    assert vocab == ["[PAD]", "[UNK]", "|", "e", "n", "o", "r", "z"]
    index = {t: i for i, t in enumerate(vocab)}
    assert speech_data.text_to_ids("one zoo", index, "|") == [5, 4, 3, 2, 7, 5, 5]
    assert speech_data.text_to_ids("ox", index, "|") == [5, 1]  # unseen in training: [UNK]
    tokenizer = speech_data.make_tokenizer(vocab, "|")
    assert len(tokenizer) == len(vocab) and tokenizer.pad_token_id == speech_data.BLANK_ID
    assert tokenizer("one zoo ox").input_ids == speech_data.text_to_ids("one zoo ox", index, "|")  # same ids as the run's tokenizer


def test_load_data_from_file_names_maps_digits_to_words(clips: Path) -> None:
    data = speech.load_data(data_cfg(clips), 0)
    assert data.train_split == "train" and data.eval_splits == ["test"]
    assert data.labels == ["[PAD]", "[UNK]", "|", "e", "n", "o", "s", "v"]
    assert sorted(set(data.splits["test"]["text"])) == ["one", "seven"] and len(data.splits["test"]) == 10
    row = data.splits["train"][0]
    assert speech_data.ids_to_text(row["labels"], data.labels, "|") == row["text"]
    assert data.info["max_duration_dropped"] == 0 and data.info["sampling_rates"] == {"8000": 20}


def test_max_duration_drops_long_training_clips_and_counts_them(clips: Path) -> None:
    data = speech.load_data(data_cfg(clips, max_duration=0.31), 0)
    assert data.info["max_duration_dropped"] == 2  # i = 5 (0.4 s) of each word; eval keeps every clip
    assert len(data.splits["train"]) == 8 and len(data.splits["test"]) == 10


def test_empty_transcript_is_an_error_naming_split_row_and_file(tmp_path: Path) -> None:
    folder = make_word_clips(tmp_path / "c", per_word=6)
    with pytest.raises(DataError, match=r"empty transcript in split 'test' row 5 \(audio .*7_tone_0\.wav, transcript '\?\!' after normalisation\) \(4 more\)"):
        speech.load_data(data_cfg(folder, transcript_map={"1": "one", "7": "?!"}, chars_to_ignore="?!"), 0)


def test_audiofolder_metadata_and_hub_style_dataset_columns(tmp_path: Path) -> None:
    folder = tmp_path / "af"
    rows = []
    for split in ("train", "test"):
        for i, digit in enumerate(["1", "7", "1"]):
            name = f"{split}/{digit}_{i}.wav"
            write_clip(folder / name, digit, 0.2, seed=i)
            rows.append((name, f"{WORDS[digit][0].upper()}, {'EVAL' if split == 'test' else 'TRAIN'}."))
    for split in ("train", "test"):
        (folder / split / "metadata.csv").write_text("file_name,sentence\n" + "".join(
            f"{Path(n).name},\"{t}\"\n" for n, t in rows if n.startswith(split)))
    cfg = from_dict(speech.DataConfig, {"source": "audiofolder", "data_dir": str(folder), "text_column": "sentence", "chars_to_ignore": ",."}, "data")
    data = speech.load_data(cfg, 0)
    assert sorted(data.splits["test"]["text"]) == ["one eval", "one eval", "seven eval"]
    assert data.info["unseen_characters"] == {"test": 3}  # the l of "eval": never in a training transcript
    assert speech_data.ids_to_text(data.splits["test"][0]["labels"], data.labels, "|").endswith("eva[UNK]")
    hub = from_dict(speech.DataConfig, {"dataset": str(folder), "text_column": "sentence", "text_case": "keep"}, "data")
    assert sorted(speech.load_data(hub, 0).splits["train"]["text"])[0] == "ONE, TRAIN."
    bad = from_dict(speech.DataConfig, {"dataset": str(folder), "text_column": "transcript"}, "data")
    with pytest.raises(DataError, match="data.text_column: column 'transcript' not in dataset"):
        speech.load_data(bad, 0)


def test_sources_read_with_speech_keys_name_them_in_errors(tmp_path: Path) -> None:
    """audio_sources serves both audio tasks: with speech's Target, every message names speech's own fields."""
    with pytest.raises(ConfigError, match=re.escape("data.transcript_regex: required with source filenames, e.g. '^(\\d)_' with a transcript_map")):
        from_dict(speech.DataConfig, {"source": "filenames", "data_dir": str(tmp_path)}, "data")
    with pytest.raises(ConfigError, match="data.transcript_map: only used with source filenames"):
        from_dict(speech.DataConfig, {"source": "audiofolder", "data_dir": str(tmp_path), "transcript_map": {"1": "one"}}, "data")
    folder = make_word_clips(tmp_path / "c", per_word=6)
    with pytest.raises(DataError, match=r"data.transcript_map: no entry for '7' \(from file .*7_tone_0\.wav\); keys are 1$"):
        speech.load_data(data_cfg(folder, transcript_map={"1": "one"}), 0)
    write_clip(folder / "noise.wav", "1", 0.2, seed=0)
    with pytest.raises(DataError, match=r"data.transcript_regex: file .*noise\.wav does not match '\^\(\\\\d\)_'"):
        speech.load_data(data_cfg(folder), 0)
    cfg = from_dict(speech.DataConfig, {"source": "audiofolder", "data_dir": str(folder)}, "data")  # no metadata file
    with pytest.raises(DataError, match=re.escape(f"data.text_column: column 'text' not in audiofolder {folder} (transcripts come from its metadata.csv/.jsonl) split 'train'")):
        speech.load_data(cfg, 0)


def test_collator_pads_inputs_and_labels_separately(clips: Path) -> None:
    d, m = data_cfg(clips), model_cfg()
    data = speech.load_data(d, 0)
    processor = speech.build_processor(m, d, data.labels)
    enc = speech.encode(data.splits, processor, d, m, data.train_split)
    rows = [enc["test"][0], enc["test"][9]]  # 0.15 s "one" and 0.35 s "seven"
    batch = speech.collator(processor, d)(rows)
    assert batch["input_values"].shape == (2, 2800) and batch["attention_mask"].sum(-1).tolist() == [1200, 2800]
    assert batch["labels"].tolist() == [[5, 4, 3, -100, -100], [6, 3, 7, 3, 4]]
    assert set(enc["train"].column_names) == {"input_values", "length", "labels"}


def test_padded_frames_are_marked_and_the_loss_ignores_them(clips: Path) -> None:
    d, m = data_cfg(clips), model_cfg()
    data = speech.load_data(d, 0)
    processor = speech.build_processor(m, d, data.labels)
    enc = speech.encode(data.splits, processor, d, m, data.train_split)
    net = speech.build_model(m, data.labels).model.eval()
    collate = speech.collator(processor, d)
    loss_fn = speech.make_loss(m, d)
    short = collate([enc["test"][0]])
    padded = collate([enc["test"][0], enc["test"][9]])
    with torch.no_grad():
        alone, together = net(**{k: v for k, v in short.items() if k != "labels"}), net(**{k: v for k, v in padded.items() if k != "labels"})
    frames = alone.logits.shape[1]
    assert (together.logits[0, frames:] == ctc.NO_FRAME).all() and (together.logits[1] != ctc.NO_FRAME).any(-1).all()
    torch.testing.assert_close(together.logits[0, :frames], alone.logits[0], atol=1e-5, rtol=0)  # padding does not leak
    per_token = loss_fn(alone, short["labels"]) * 3  # "one": 3 target tokens
    both = loss_fn(together, padded["labels"]) * 8  # 3 + 5 target tokens
    assert per_token.item() < both.item()
    assert loss_fn.counts == "labels" and speech.make_loss(model_cfg(ctc_loss_normalization="samples"), d).counts == "rows"


def test_greedy_decoding_and_error_rates() -> None:
    vocab = ["[PAD]", "[UNK]", "|", "e", "n", "o", "r", "z"]
    ids = np.array([[7, 7, 0, 3, 6, 6, 5, 2, 0, 5, 4, 0, 3, -100], [5, 0, 5, 4, 3, 3, -100, -100, -100, -100, -100, -100, -100, -100]])
    assert ctc.transcripts(ids, vocab, "|") == ["zero one", "oone"]
    logits = np.full((1, 4, len(vocab)), ctc.NO_FRAME, dtype=np.float32)
    logits[0, :2] = 0.0
    logits[0, 0, 7], logits[0, 1, 3] = 5.0, 5.0
    assert ctc.transcripts(logits, vocab, "|") == ["ze"]
    rates = ctc.error_rates(["zero one", "one"], ["zero two", "one"])
    assert rates == {"wer": pytest.approx(1 / 3), "cer": pytest.approx(3 / 11), "ser": 0.5}


def test_describe_model_names_blocks_head_and_the_rest() -> None:
    net = speech.build_model(model_cfg(), ["[PAD]", "[UNK]", "|", "a"]).model
    info = speech.describe_model(net)
    assert info.family == "wav2vec2" and info.blocks == ["wav2vec2.encoder.layers.0"] and info.head == ["lm_head"]
    assert info.final == ["wav2vec2.encoder.layer_norm"]  # stable layer norm: after the last block
    assert info.embeddings == ["wav2vec2.feature_extractor", "wav2vec2.feature_projection", "wav2vec2.encoder.pos_conv_embed"]
    wrapped = parse_strategy({"name": "lora", "r": 2}).apply(net, info)  # the wav2vec2 family's default targets
    names = [n for n, m in wrapped.named_modules() if hasattr(m, "lora_A")]
    assert len(names) == 3 and all(".attention." in n for n in names)


@pytest.mark.parametrize("override, message", [
    ("model.config.vocab_size=12", "model.config.vocab_size: set by the task"),
    ("model.config.hidden_sise=8", "model.config.hidden_sise: unknown key; did you mean 'hidden_size'?"),
    ("model.ctc_loss_normalization=batch", "model.ctc_loss_normalization: 'batch' is not one of 'tokens', 'samples'"),
    ("data.transcript_regex=(", "data.transcript_regex: invalid regular expression"),
    ("data.word_delimiter=' '", "data.word_delimiter: one visible character"),
    ("data.source=audiofolder", "data.transcript_regex: only used with source filenames"),
    ("data.text_case=title", "data.text_case: 'title' is not one of 'lower', 'upper', 'keep'"),
])
def test_recipe_errors_name_the_field(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_recipe(FSDD_ASR, [override])


def test_relative_data_dir_is_recorded_absolute(clips: Path, tmp_path: Path, monkeypatch) -> None:
    """A run's stored recipe finds its clips from any working directory (as for the other tasks)."""
    import yaml
    from sft_hub.config import parse_recipe

    raw = yaml.safe_load(FSDD_ASR.read_text())
    monkeypatch.chdir(clips.parent)
    raw["data"]["data_dir"] = clips.name
    recipe = parse_recipe(raw)
    assert recipe.data.data_dir == str(clips.resolve())
    assert raw["data"]["data_dir"] == str(clips.resolve())
