"""Audio classification (keyword spotting, spoken digits, any clip-level label) on the shared engine.

Models: any `AutoModelForAudioClassification` (wav2vec2, HuBERT, WavLM, AST, Whisper encoder, ...) from the
Hub or a local folder, or, with a model type as `name_or_path`, built from `config` (random weights seeded
by `init_seed`) with that type's feature extractor built from `feature_extractor`. Data: see `audio_sources`
(where clips come from) and `audio_data` (file checks, decoding).
Clips are decoded and resampled once to the feature extractor's `sampling_rate`; whole-clip features are
cached by `datasets`. With `max_duration`, training clips are cached as waveforms instead and the collator
crops a random window of at most `max_duration` seconds and extracts features per batch (a new crop each epoch).
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from datasets import Array2D, Audio, Dataset, DatasetDict, Features, List, Value
from transformers import AutoConfig, AutoFeatureExtractor, AutoModelForAudioClassification
from transformers.models.auto.feature_extraction_auto import FEATURE_EXTRACTOR_MAPPING_NAMES, feature_extractor_class_from_name
from transformers.models.auto.modeling_auto import MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES as AUDIO_MODEL_TYPES

from sft_hub.base_model import BaseRef, resolve_source, weight_files
from sft_hub.model_info import ModelInfo, describe, top_level_head
from sft_hub.schema import unknown_key
from sft_hub.errors import ConfigError, DataError
from sft_hub.metrics import MultiLabelMetrics, make_compute_metrics
from sft_hub.tasks import audio_data, audio_sources
from sft_hub.tasks import labels as label_utils
from sft_hub.tasks import new_head
from sft_hub.tasks import seeding
from sft_hub.tasks.base import BuiltModel, TaskData
from sft_hub.tasks.seeding import ROW, SampleSeeds

log = logging.getLogger("sft_hub")
FAMILIES = {"audio-spectrogram-transformer": "ast"}  # model_type -> the family name strategies key on
_LABEL_KEYS = ("num_labels", "id2label", "label2id", "problem_type")


@dataclass
class ModelConfig:
    PATH_FIELDS: ClassVar[tuple[str, ...]] = ("name_or_path",)
    name_or_path: str  # Hub id or local folder (pretrained), or a model type (audio-spectrogram-transformer, wav2vec2, ...) built from `config`
    revision: str | None = None
    config: dict[str, Any] | None = None  # with a model type: its config fields (hidden_size, num_hidden_layers, ...); random weights
    feature_extractor: dict[str, Any] | None = None  # feature extractor settings (overrides for a pretrained one)
    freeze_feature_encoder: bool = False  # wav2vec2-family: keep the convolutional waveform encoder fixed
    init_seed: int = 0  # seeds the random initial weights of a model built from `config`
    trust_remote_code: bool = False

    def validate(self, where: str) -> None:
        if from_scratch(self):
            _scratch_classes(self, where)
        elif self.config is not None:
            raise ConfigError(f"{where}.config: only used to build a model from scratch; name_or_path {self.name_or_path!r} "
                              f"is not a model type ({', '.join(AUDIO_MODEL_TYPES)})")


def from_scratch(model: ModelConfig) -> bool:
    """A model type (not an existing folder) in name_or_path means: build from `config`, no pretrained weights."""
    return model.name_or_path in AUDIO_MODEL_TYPES and not Path(model.name_or_path).exists()


def _scratch_classes(model: ModelConfig, where: str) -> tuple[Any, type, dict[str, Any]]:
    """(config, feature extractor class, its settings) for a from-scratch model; every key checked by name."""
    settings = dict(model.config or {})
    model_type = model.name_or_path
    if settings.pop("model_type", model_type) != model_type:
        raise ConfigError(f"{where}.config.model_type: {model.config['model_type']!r} differs from name_or_path {model_type!r}; leave it out")
    defaults = AutoConfig.for_model(model_type).to_dict()
    for key in settings:
        if key in _LABEL_KEYS:
            raise ConfigError(f"{where}.config.{key}: set by the data's labels, leave it out")
        if key not in defaults:
            raise unknown_key(f"{where}.config", key, [k for k in defaults if not k.startswith("_")])
    try:
        config = AutoConfig.for_model(model_type, **settings)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}.config: {str(exc).splitlines()[0]}") from None
    fe_class = feature_extractor_class_from_name(FEATURE_EXTRACTOR_MAPPING_NAMES[model_type])
    fe_settings = dict(model.feature_extractor or {})
    if "sampling_rate" not in fe_settings:  # a rate is never assumed: the clips are resampled to exactly this
        raise ConfigError(f"{where}.feature_extractor.sampling_rate: required for a model built from config (e.g. 16000)")
    with warnings.catch_warnings():  # the class defaults (e.g. AST's 128 mel bins) may warn about empty mel filters
        warnings.simplefilter("ignore")
        fe_defaults = fe_class().to_dict()
    for key in fe_settings:
        if key not in fe_defaults or key == "feature_extractor_type":
            raise unknown_key(f"{where}.feature_extractor", key, [k for k in fe_defaults if k != "feature_extractor_type"])
    for key in sorted(set(fe_defaults) & set(defaults) - {"feature_extractor_type"}):  # e.g. AST num_mel_bins, max_length
        if key in fe_settings and fe_settings[key] != getattr(config, key):
            raise ConfigError(f"{where}.feature_extractor.{key}: {fe_settings[key]!r} differs from config.{key} {getattr(config, key)!r}")
        fe_settings[key] = getattr(config, key)  # the model's input shape decides the features' shape
    return config, fe_class, fe_settings


@dataclass
class DataConfig:
    PATH_FIELDS: ClassVar[tuple[str, ...]] = ("data_dir",)  # only when it exists locally (else: a folder in the Hub repo)
    dataset: str | None = None  # a Hub dataset id
    dataset_config: str | None = None
    dataset_revision: str | None = None
    source: Literal["audiofolder", "filenames"] | None = None
    data_dir: str | None = None  # local folder (audiofolder, filenames) or a folder inside the Hub dataset repo
    file_glob: str = "*.wav"  # filenames: which files under data_dir
    label_regex: str | None = None  # filenames: searched in the file name; the label is group 'label', else group 1
    split_regex: dict[str, str] | None = None  # filenames: split -> pattern on the file name; unmatched files train
    audio_column: str = "audio"
    label_column: str = "label"
    problem_type: Literal["classification", "multi_label_classification"] = "classification"
    label_delimiter: str | None = None  # multi-label: split label strings on this ("a|b"); a list column needs none
    class_weights: str | dict[str | int, float] | None = None  # "balanced" or label -> weight: loss weight per class (sft_hub/losses.py)
    threshold: float | Literal["per_label", "global"] | None = None  # multi-label decision thresholds; default per_label, chosen on validation
    train_split: str = "train"
    eval_splits: list[str] | None = None
    validation_fraction: float | None = None  # carve a seeded validation split out of train
    max_duration: float | None = None  # seconds: random crop of longer training clips (evaluation uses whole clips)
    on_bad_file: Literal["error", "skip"] = "error"  # empty/corrupt clips: stop naming the file, or drop and count
    max_train_samples: int | None = None
    max_eval_samples: int | None = None

    def validate(self, where: str) -> None:
        audio_sources.check_source(self, where, audio_sources.LABEL)
        label_utils.check_label_options(self, where)


def load_data(data: DataConfig, seed: int) -> TaskData:
    raw = audio_sources.read(data, audio_sources.LABEL)
    splits, train, evals = label_utils.choose_splits(raw, data.train_split, data.eval_splits, data.validation_fraction, seed)
    multi = data.problem_type == label_utils.MULTI_LABEL
    if multi:
        splits, labels = label_utils.encode_multi_labels(splits, train, evals, data.label_delimiter)
    else:
        splits, labels = label_utils.encode_labels(splits, train, evals, "classification")
    splits = label_utils.limit(splits, train, evals, data.max_train_samples, data.max_eval_samples, seed)
    splits, info = audio_data.check_files(splits, data.on_bad_file)
    for name in [train, *evals]:
        if len(splits[name]) == 0:
            raise DataError(f"data: split {name!r} has no readable audio files left ({info['skipped_files']} skipped)")
    return TaskData(splits=splits, train_split=train, eval_splits=evals, labels=labels, info=info, multi_label=multi)


def load_processor(model: ModelConfig, saved: Path | None = None) -> Any:
    if saved is not None:
        return AutoFeatureExtractor.from_pretrained(str(saved))
    if from_scratch(model):
        _, fe_class, settings = _scratch_classes(model, "model")
        return fe_class(**settings)
    overrides = dict(model.feature_extractor or {})
    try:
        fe = AutoFeatureExtractor.from_pretrained(resolve_source(model.name_or_path), revision=model.revision,
                                                  trust_remote_code=model.trust_remote_code, **overrides)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model.name_or_path: cannot load a feature extractor from {model.name_or_path!r}: {str(exc).splitlines()[0]}") from None
    known = fe.to_dict()
    for key in overrides:
        if key not in known:
            raise unknown_key("model.feature_extractor", key, [k for k in known if k != "feature_extractor_type"])
    if not getattr(fe, "sampling_rate", None):
        raise ConfigError(f"model.feature_extractor.sampling_rate: {model.name_or_path} declares no sampling rate; set one")
    return fe


def save_processor(processor: Any, path: Path) -> None:
    processor.save_pretrained(path)


def _features(processor: Any, waves: list[np.ndarray]) -> list[np.ndarray]:
    out = processor(waves, sampling_rate=processor.sampling_rate)
    return [np.asarray(x, dtype=np.float32) for x in out[processor.model_input_names[0]]]


def _feature_type(processor: Any) -> Any:
    """Arrow type of one clip's features: 2-D arrays (log-mel frames) as Array2D, which reads back ~5x faster."""
    shape = _features(processor, [np.zeros(processor.sampling_rate, dtype=np.float32)])[0].shape
    return Array2D((None, shape[1]), "float32") if len(shape) == 2 else List(Value("float32"))


def encode(splits: DatasetDict, processor: Any, data: DataConfig, model: ModelConfig, train_split: str | None) -> DatasetDict:
    """Decode once (cached by `datasets`); features for whole clips, or waveforms for the random-crop train split."""
    rate, name = processor.sampling_rate, processor.model_input_names[0]

    def decode_batch(batch: dict) -> tuple[list[np.ndarray], list[int]]:  # pure: datasets caches by its hash
        decoded = [audio_data.decode(value, rate) for value in batch["audio"]]
        return [wave for wave, _ in decoded], [source for _, source in decoded]

    def to_features(batch: dict) -> dict:
        waves, sources = decode_batch(batch)
        return {name: _features(processor, waves), "_rate": sources}

    def to_waveforms(batch: dict) -> dict:
        waves, sources = decode_batch(batch)
        return {"waveform": waves, "_rate": sources}

    kind, resampled, out = _feature_type(processor), Counter(), {}
    for split, ds in splits.items():
        crop = split == train_split and data.max_duration is not None
        fn, column, what = (to_waveforms, "waveform", "decoding") if crop else (to_features, name, "extracting features")
        features = Features({**{k: v for k, v in ds.features.items() if k != "audio"}, column: List(Value("float32")) if crop else kind,
                             "_rate": Value("int32")})
        mapped = ds.map(fn, batched=True, batch_size=64, remove_columns=["audio"], features=features, desc=f"{what} ({split})")
        resampled.update(r for r in mapped["_rate"] if r != rate)
        mapped = mapped.remove_columns("_rate")
        out[split] = (seeding.with_rows(mapped) if crop else mapped).with_format("numpy")  # crops drawn per (seed, epoch, row)
    for source_rate, n in sorted(resampled.items()):
        log.warning("data: %d clips at %d Hz resampled to %d Hz (the feature extractor's sampling_rate)", n, source_rate, rate)
    return DatasetDict(out)


def collator(processor: Any, data: DataConfig):
    name = processor.model_input_names[0]
    max_samples = int(round(data.max_duration * processor.sampling_rate)) if data.max_duration else None

    seeds = SampleSeeds()  # the engine sets the epoch; see seeding.py

    def crop(wave: np.ndarray, row: Any) -> np.ndarray:
        if max_samples is None or len(wave) <= max_samples:
            return wave
        with seeds.seeded(int(row)):  # the same window for a row in an epoch, resumed or not; a new one each epoch
            start = int(torch.randint(0, len(wave) - max_samples + 1, ()))
        return wave[start:start + max_samples]

    def collate(features: list[dict]) -> dict:
        if "waveform" in features[0]:  # training rows with max_duration: a fresh random window each epoch
            values = _features(processor, [crop(np.asarray(f["waveform"], dtype=np.float32), f.get(ROW, -1)) for f in features])
        else:
            values = [np.asarray(f[name], dtype=np.float32) for f in features]
        batch = dict(processor.pad({name: values}, return_tensors="pt"))
        if "labels" in features[0]:
            labels = np.asarray([f["labels"] for f in features])  # class ids, or multi-hot rows (multi-label)
            batch["labels"] = torch.as_tensor(labels, dtype=torch.long if labels.dtype.kind in "iu" else torch.float32)
        return batch

    collate.set_epoch = seeds.set_epoch  # type: ignore[attr-defined]
    return collate


def build_model(model: ModelConfig, labels: list[str] | None) -> BuiltModel:
    labels = labels or []
    kwargs = {"num_labels": len(labels), "id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in enumerate(labels)}}
    if from_scratch(model):
        config, _, _ = _scratch_classes(model, "model")
        config.update(kwargs)
        with torch.random.fork_rng(devices=[]):  # reproducible random weights without touching the global RNG
            torch.manual_seed(model.init_seed)
            try:
                net = AutoModelForAudioClassification.from_config(config)
            except (ValueError, RuntimeError) as exc:  # e.g. hidden_size not a multiple of num_attention_heads
                raise ConfigError(f"model.config: cannot build {model.name_or_path}: {str(exc).splitlines()[0]}") from None
        base, files = BaseRef.scratch(model.name_or_path), []
    else:
        source = resolve_source(model.name_or_path)
        try:
            net, info = AutoModelForAudioClassification.from_pretrained(
                source, revision=model.revision, trust_remote_code=model.trust_remote_code, ignore_mismatched_sizes=True,
                output_loading_info=True, **kwargs)
            saved = AutoConfig.from_pretrained(source, revision=model.revision, trust_remote_code=model.trust_remote_code)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"model.name_or_path: cannot load {model.name_or_path!r}: {str(exc).splitlines()[0]}") from None
        initialised = [*info["missing_keys"], *(m[0] for m in info["mismatched_keys"])]
        new_head.renew_head(net, top_level_head(net), new_head.checkpoint_labels(saved), labels, initialised)
        files, base = weight_files(source, model.revision), BaseRef.pretrained(model.name_or_path, model.revision)
    if model.freeze_feature_encoder:
        _freeze_feature_encoder(net)
    return BuiltModel(net, describe_model(net), files, base)


def describe_model(model: torch.nn.Module, head: list[str] | None = None) -> ModelInfo:
    """Family = the config's model_type (audio-spectrogram-transformer -> "ast"); blocks = the encoder layers;
    head = every top-level module with weights outside the backbone (projector + classifier, or AST's MLP head)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__.lower()
    return describe(model, FAMILIES.get(model_type, model_type), head if head is not None else top_level_head(model), "audio")


def _freeze_feature_encoder(net: torch.nn.Module) -> None:
    encoder = getattr(net.base_model, "feature_extractor", None)
    if not hasattr(net, "freeze_feature_encoder") or encoder is None:
        raise ConfigError(f"model.freeze_feature_encoder: {type(net).__name__} has no convolutional feature encoder")
    net.freeze_feature_encoder()
    # Also stop gradients at its output, so the encoder stays fixed even if a strategy re-enables requires_grad.
    encoder.register_forward_hook(lambda module, args, output: output.detach())


def metrics(data: DataConfig, labels: list[str] | None):
    if data.problem_type == label_utils.MULTI_LABEL:
        return MultiLabelMetrics(len(labels or []))
    return make_compute_metrics(regression=False)


def main_metric(data: DataConfig, labels: list[str] | None) -> str:
    return "mAP" if data.problem_type == label_utils.MULTI_LABEL else "accuracy"


def read_inputs(data: DataConfig, values: list[str], file: Path | None) -> Dataset:
    """Clips to predict: audio file paths or folders as arguments, and/or --file listing one path per line."""
    paths = audio_data.list_inputs(values, file)
    return Dataset.from_dict({"audio": paths}).cast_column("audio", Audio(decode=False))


def describe_input(row: dict) -> str:
    return audio_data.name_of(row["audio"])
