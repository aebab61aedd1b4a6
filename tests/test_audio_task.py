"""Audio task: config checks, data sources and file checks, decoding/resampling, features, collator, tiny models.

Offline: tiny wav2vec2 / HuBERT / WavLM / AST / Whisper models built from configs (no weights); WAV
fixtures generated in tmp_path at 8 kHz and 16 kHz, mono and stereo, plus a corrupt and an empty file.
Data sources and file checks are in test_audio_data.py; engine runs (strategies, reload equality, the CLI)
in test_audio_engine.py. Fixture helpers are in audio_fixtures.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from sft_hub.config import from_dict, load_recipe
from sft_hub.errors import ConfigError
from sft_hub.strategies import parse_strategy
from sft_hub.tasks import audio

from audio_fixtures import FSDD_RECIPE, TINY, data_cfg, make_clips, model_cfg, pretrained_folder


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    return make_clips(tmp_path_factory.mktemp("clips"))


# --- config validation --------------------------------------------------------------------------------

@pytest.mark.parametrize("override, message", [
    ("model.config.hidden_sise=8", "model.config.hidden_sise: unknown key; did you mean 'hidden_size'?"),
    ("model.config.num_labels=3", "model.config.num_labels: set by the data's labels"),
    ("model.feature_extractor={mean: 0.0}", "model.feature_extractor.sampling_rate: required"),
    ("model.feature_extractor.sampling_rat=8000", "did you mean 'sampling_rate'"),
    ("model.feature_extractor.num_mel_bins=40", "model.feature_extractor.num_mel_bins: 40 differs from config.num_mel_bins 32"),
    ("model.name_or_path=facebook/wav2vec2-base", "model.config: only used to build a model from scratch"),
    ("model.config.model_type=wav2vec2", "model.config.model_type: 'wav2vec2' differs from name_or_path"),
    ("data.label_regex=(", "data.label_regex: invalid regular expression"),
    ("data.split_regex={test: '['}", "data.split_regex.test: invalid regular expression"),
    ("data.max_duration=0", "data.max_duration: must be > 0"),
    ("data.on_bad_file=ignore", "data.on_bad_file: 'ignore' is not one of 'error', 'skip'"),
    ("data.dataset=superb", "data: give exactly one of dataset or source"),
    ("data.source=audiofolder", "data.label_regex: only used with source filenames"),
])
def test_recipe_errors_name_the_field(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_recipe(FSDD_RECIPE, [override])


def test_data_needs_a_source_and_its_fields(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data: give exactly one of dataset or source"):
        from_dict(audio.DataConfig, {}, "data")
    with pytest.raises(ConfigError, match="data.data_dir: required with source audiofolder"):
        from_dict(audio.DataConfig, {"source": "audiofolder"}, "data")
    with pytest.raises(ConfigError, match="data.label_regex: required with source filenames"):
        from_dict(audio.DataConfig, {"source": "filenames", "data_dir": str(tmp_path)}, "data")


# --- features and collator ----------------------------------------------------------------------------

def test_encode_caches_whole_clips_for_eval_and_crops_training_in_the_collator(clips: Path) -> None:
    data_c, model_c = data_cfg(clips, max_duration=0.1), model_cfg("wav2vec2")
    data = audio.load_data(data_c, 0)
    fe = audio.load_processor(model_c)
    enc = audio.encode(data.splits, fe, data_c, model_c, data.train_split)
    assert enc["train"].column_names == ["labels", "waveform", "_row"] and "input_values" in enc["test"].column_names
    collate = audio.collator(fe, data_c)
    train = collate([enc["train"][i] for i in range(4)])
    assert set(train) == {"input_values", "labels"} and train["input_values"].shape == (4, 1600)
    test_rows = [enc["test"][i] for i in range(4)]
    test = collate(test_rows)
    assert test["input_values"].shape[1] == max(len(r["input_values"]) for r in test_rows) > 1600  # whole clips, padded
    # Every clip was resampled to 16 kHz: a 0.3 s clip is 4800 samples whatever its file's rate.
    assert sorted({len(r["input_values"]) for r in enc["test"]}) == [4800, 5600, 6400, 7200]


# --- models ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", list(TINY))
def test_tiny_models_train_with_lora_on_attention_projections(clips: Path, kind: str) -> None:
    data_c, model_c = data_cfg(clips), model_cfg(kind)
    data = audio.load_data(data_c, 0)
    fe = audio.load_processor(model_c)
    enc = audio.encode(data.splits, fe, data_c, model_c, data.train_split)
    batch = audio.collator(fe, data_c)([enc["train"][i] for i in range(4)])
    built = audio.build_model(model_c, data.labels)
    assert built.weight_files == [] and built.base.kind == "config" and built.model.config.num_labels == 2
    assert built.head_modules == (["classifier"] if kind == "ast" else ["projector", "classifier"])
    model = parse_strategy({"name": "lora", "r": 4}).apply(built.model, built.info)
    lora = {n.rsplit(".lora_A", 1)[0].rsplit(".", 1)[-1] for n, _ in model.named_parameters() if ".lora_A" in n}
    # WavLM's attention never calls its projection modules (transformers#48773): LoRA goes to its feed-forward layers.
    assert lora == ({"intermediate_dense", "output_dense"} if kind == "wavlm" else {"q_proj", "k_proj", "v_proj"})
    out = model(**batch)
    out.loss.backward()
    trained = {n for n, p in model.named_parameters() if p.grad is not None}
    lora_params = {n for n, p in model.named_parameters() if "lora_" in n}
    assert lora_params and lora_params <= trained and any("modules_to_save" in n for n in trained)  # every adapter gets a gradient


def test_scratch_weights_are_seeded(clips: Path) -> None:
    a = audio.build_model(model_cfg("ast"), ["a", "b"]).model.state_dict()
    b = audio.build_model(model_cfg("ast"), ["a", "b"]).model.state_dict()
    c = audio.build_model(model_cfg("ast", init_seed=1), ["a", "b"]).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a) and not all(torch.equal(a[k], c[k]) for k in a)


def test_freeze_feature_encoder_holds_even_under_full(clips: Path) -> None:
    built = audio.build_model(model_cfg("wav2vec2", freeze_feature_encoder=True), ["1", "7"])
    model = parse_strategy("full").apply(built.model, built.info)
    conv = {n: p.detach().clone() for n, p in model.named_parameters() if ".feature_extractor." in n}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(input_values=torch.randn(2, 4000), labels=torch.tensor([0, 1])).loss.backward()
    opt.step()
    assert conv and all(torch.equal(p, conv[n]) for n, p in model.named_parameters() if n in conv)
    assert not torch.equal(model.classifier.weight, built.model.classifier.weight.detach().clone() * 0)
    with pytest.raises(ConfigError, match="model.freeze_feature_encoder: ASTForAudioClassification has no convolutional feature encoder"):
        audio.build_model(model_cfg("ast", freeze_feature_encoder=True), ["1", "7"])


def test_processor_round_trips_through_save(clips: Path, tmp_path: Path) -> None:
    fe = audio.load_processor(model_cfg("ast"))
    assert (fe.sampling_rate, fe.num_mel_bins, fe.max_length) == (8000, 16, 32)  # shape taken from the model's config
    audio.save_processor(fe, tmp_path / "processor")
    again = audio.load_processor(model_cfg("ast"), saved=tmp_path / "processor")
    assert again.to_dict() == fe.to_dict()


def test_pretrained_folder_loads_with_checked_overrides(tmp_path: Path) -> None:
    folder = pretrained_folder(tmp_path / "w2v")
    fe = audio.load_processor(from_dict(audio.ModelConfig, {"name_or_path": str(folder), "feature_extractor": {"return_attention_mask": False}}, "model"))
    assert fe.return_attention_mask is False and fe.sampling_rate == 16000
    with pytest.raises(ConfigError, match="model.feature_extractor.return_attention_mas: unknown key; did you mean 'return_attention_mask'"):
        audio.load_processor(from_dict(audio.ModelConfig, {"name_or_path": str(folder), "feature_extractor": {"return_attention_mas": False}}, "model"))
    built = audio.build_model(from_dict(audio.ModelConfig, {"name_or_path": str(folder)}, "model"), ["a", "b", "c"])
    assert built.weight_files == [folder / "model.safetensors"] and built.head_modules == ["projector", "classifier"]
    with pytest.raises(ConfigError, match=r"model.name_or_path: cannot load 'nobody/no-such-model'"):
        audio.build_model(from_dict(audio.ModelConfig, {"name_or_path": "nobody/no-such-model"}, "model"), ["a", "b"])
