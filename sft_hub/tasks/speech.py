"""Speech recognition (CTC) on the shared engine: any `AutoModelForCTC` with its feature extractor.

Models: a Hub id or local folder (wav2vec2, HuBERT, WavLM, XLS-R, ...; the new `lm_head` sized to the
vocabulary, `config` overrides such as mask_time_prob or layerdrop checked by name), or, with a model type as
`name_or_path`, one built from `config` with random weights seeded by `init_seed` (as audio classification).
Data and vocabulary: see `speech_data`; the run saves a `Wav2Vec2Processor` (feature extractor + the
`Wav2Vec2CTCTokenizer` over the training characters) in `<run>/processor`, so `export --merge` output loads
with `AutoProcessor` / `AutoModelForCTC`. Loss, frames and metrics: see `ctc`.

Hooks beyond the audio-classification task that the engine and inference use when a task has them:
`build_processor` (the vocabulary comes from the data), `make_loss`, `preprocess_logits_for_metrics`,
`format_predictions` (transcripts instead of class scores).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from datasets import Audio, Dataset, DatasetDict, Features, List, Value
from transformers import AutoConfig, AutoModelForCTC, AutoProcessor, Wav2Vec2Processor
from transformers.models.auto.modeling_auto import MODEL_FOR_CTC_MAPPING_NAMES as CTC_MODEL_TYPES

from sft_hub.base_model import BaseRef, resolve_source, weight_files
from sft_hub.schema import unknown_key
from sft_hub.errors import ConfigError, DataError
from sft_hub.tasks import audio, audio_data, audio_sources, ctc, speech_data
from sft_hub.tasks import labels as label_utils
from sft_hub.model_info import ModelInfo
from sft_hub.tasks.base import BuiltModel, TaskData

log = logging.getLogger("sft_hub")
_SET_BY_TASK = ("vocab_size", "pad_token_id", "ctc_zero_infinity", "ctc_loss_reduction")

@dataclass
class ModelConfig:
    PATH_FIELDS: ClassVar[tuple[str, ...]] = ("name_or_path",)
    name_or_path: str  # Hub id or local folder, or a CTC model type (wav2vec2, hubert, ...) built from `config`
    revision: str | None = None
    config: dict[str, Any] | None = None  # scratch: every config field; pretrained: overrides (mask_time_prob, layerdrop, ...)
    feature_extractor: dict[str, Any] | None = None
    freeze_feature_encoder: bool = False  # keep the convolutional waveform encoder fixed
    ctc_zero_infinity: bool = True  # an utterance too long for its frames adds zero loss instead of inf
    ctc_loss_normalization: Literal["tokens", "samples"] = "tokens"  # CTC summed, divided by these (see ctc.py)
    init_seed: int = 0
    trust_remote_code: bool = False

    def validate(self, where: str) -> None:
        for key in self.config or {}:
            if key in _SET_BY_TASK:
                raise ConfigError(f"{where}.config.{key}: set by the task (vocabulary / model.ctc_zero_infinity), leave it out")
        if from_scratch(self):
            audio._scratch_classes(self, where)


def from_scratch(model: ModelConfig) -> bool:
    return model.name_or_path in CTC_MODEL_TYPES and not Path(model.name_or_path).exists()


@dataclass
class DataConfig:
    PATH_FIELDS: ClassVar[tuple[str, ...]] = ("data_dir",)  # only when it exists locally (else: a folder in the Hub repo)
    dataset: str | None = None  # a Hub dataset id
    dataset_config: str | None = None
    dataset_revision: str | None = None
    source: Literal["audiofolder", "filenames"] | None = None
    data_dir: str | None = None
    file_glob: str = "*.wav"
    transcript_regex: str | None = None  # filenames: searched in the file name; group 'text', else group 1
    transcript_map: dict[str, str] | None = None  # filenames: matched value -> transcript ('7' -> 'seven')
    split_regex: dict[str, str] | None = None  # filenames: split -> pattern on the file name; unmatched files train
    audio_column: str = "audio"
    text_column: str = "text"  # Hub / audiofolder metadata column holding the transcript
    text_case: Literal["lower", "upper", "keep"] = "lower"
    chars_to_ignore: str = ""  # every character in this string is removed from transcripts (punctuation)
    word_delimiter: str = "|"  # the vocabulary's token for a space
    train_split: str = "train"
    eval_splits: list[str] | None = None
    validation_fraction: float | None = None
    max_duration: float | None = None  # seconds: longer training clips are dropped (counted in the manifest)
    on_bad_file: Literal["error", "skip"] = "error"
    max_train_samples: int | None = None
    max_eval_samples: int | None = None

    def validate(self, where: str) -> None:
        audio_sources.check_source(self, where, speech_data.TEXT)
        if len(self.word_delimiter) != 1 or self.word_delimiter.isspace():
            raise ConfigError(f"{where}.word_delimiter: one visible character, got {self.word_delimiter!r}")


def load_data(data: DataConfig, seed: int) -> TaskData:
    """Splits with `audio`, `text` (normalised) and `labels` (character ids); `TaskData.labels` is the vocabulary."""
    raw = audio_sources.read(data, speech_data.TEXT)
    raw = speech_data.normalise_splits(raw, data)
    splits, train, evals = label_utils.choose_splits(raw, data.train_split, data.eval_splits, data.validation_fraction, seed)
    for name in [train, *evals]:
        if len(splits[name]) == 0:
            raise DataError(f"data: split {name!r} is empty")
    splits = label_utils.limit(splits, train, evals, data.max_train_samples, data.max_eval_samples, seed)
    splits, info = audio_data.check_files(splits, data.on_bad_file, keep_seconds=True)
    splits, info["max_duration_dropped"] = speech_data.drop_long(splits, train, data.max_duration)
    for name in [train, *evals]:
        if len(splits[name]) == 0:
            raise DataError(f"data: split {name!r} has no readable audio files left ({info['skipped_files']} skipped)")
    vocab = speech_data.build_vocabulary(splits[train]["text"], data.word_delimiter)
    splits, unseen = speech_data.add_label_ids(splits, vocab, data.word_delimiter)
    if unseen:
        info["unseen_characters"] = unseen
        log.warning("data: characters never seen in training become [UNK] (%s)", ", ".join(f"{k}: {v}" for k, v in unseen.items()))
    if info["max_duration_dropped"]:
        log.warning("data: %d training clips longer than %s s dropped (data.max_duration)", info["max_duration_dropped"], data.max_duration)
    return TaskData(splits=splits, train_split=train, eval_splits=evals, labels=vocab, info=info)


def _feature_extractor(model: ModelConfig) -> Any:
    if from_scratch(model):
        _, fe_class, settings = audio._scratch_classes(model, "model")
        return fe_class(**settings)
    return audio.load_processor(model)  # pretrained: the same loading and override checks as classification


def build_processor(model: ModelConfig, data: DataConfig, labels: list[str]) -> Wav2Vec2Processor:
    """Feature extractor + a CTC tokenizer over the training vocabulary (the engine calls this, not load_processor)."""
    return Wav2Vec2Processor(feature_extractor=_feature_extractor(model), tokenizer=speech_data.make_tokenizer(labels, data.word_delimiter))


def load_processor(model: ModelConfig, saved: Path | None = None) -> Any:
    if saved is None:
        raise ConfigError("speech_recognition: the processor holds the vocabulary built from the data; load it from a run")
    return AutoProcessor.from_pretrained(str(saved))


def save_processor(processor: Any, path: Path) -> None:
    processor.save_pretrained(path)


def _fe(processor: Any) -> Any:
    return getattr(processor, "feature_extractor", processor)


def encode(splits: DatasetDict, processor: Any, data: DataConfig, model: ModelConfig, train_split: str | None) -> DatasetDict:
    """Decode and extract features once (cached by `datasets`); `length` for group_by_length; labels kept."""
    fe = _fe(processor)
    rate, name = fe.sampling_rate, fe.model_input_names[0]

    def to_inputs(batch: dict) -> dict:  # pure: datasets caches by its hash
        decoded = [audio_data.decode(value, rate) for value in batch["audio"]]
        values = audio._features(fe, [wave for wave, _ in decoded])
        return {name: values, "length": [len(v) for v in values], "_rate": [source for _, source in decoded]}

    kind, resampled, out = audio._feature_type(fe), Counter(), {}
    for split, ds in splits.items():
        keep = {k: v for k, v in ds.features.items() if k == "labels"}
        features = Features({**keep, name: kind, "length": Value("int32"), "_rate": Value("int32")})
        mapped = ds.map(to_inputs, batched=True, batch_size=64, remove_columns=[c for c in ds.column_names if c not in keep],
                        features=features, desc=f"extracting features ({split})")
        resampled.update(r for r in mapped["_rate"] if r != rate)
        out[split] = mapped.remove_columns("_rate").with_format("numpy")
    for source_rate, n in sorted(resampled.items()):
        log.warning("data: %d clips at %d Hz resampled to %d Hz (the feature extractor's sampling_rate)", n, source_rate, rate)
    return DatasetDict(out)


def collator(processor: Any, data: DataConfig):
    """Inputs padded by the feature extractor (with its attention mask), labels padded with -100, separately."""
    fe = _fe(processor)
    name = fe.model_input_names[0]

    def collate(features: list[dict]) -> dict:
        batch = dict(fe.pad({name: [np.asarray(f[name], dtype=np.float32) for f in features]}, return_tensors="pt"))
        if "labels" in features[0]:
            rows = [np.asarray(f["labels"], dtype=np.int64) for f in features]
            labels = torch.full((len(rows), max(len(r) for r in rows)), -100, dtype=torch.long)
            for i, row in enumerate(rows):
                labels[i, :len(row)] = torch.as_tensor(row.tolist())
            batch["labels"] = labels
        return batch

    return collate


def build_model(model: ModelConfig, labels: list[str] | None) -> BuiltModel:
    settings = {"vocab_size": len(labels or []), "pad_token_id": speech_data.BLANK_ID, "ctc_zero_infinity": model.ctc_zero_infinity}
    if from_scratch(model):
        config, _, _ = audio._scratch_classes(model, "model")
        config.update(settings)
        with torch.random.fork_rng(devices=[]):  # reproducible random weights without touching the global RNG
            torch.manual_seed(model.init_seed)
            try:
                net = AutoModelForCTC.from_config(config)
            except (ValueError, RuntimeError) as exc:
                raise ConfigError(f"model.config: cannot build {model.name_or_path}: {str(exc).splitlines()[0]}") from None
        base, files = BaseRef.scratch(model.name_or_path), []
    else:
        source = resolve_source(model.name_or_path)
        try:
            config = AutoConfig.from_pretrained(source, revision=model.revision, trust_remote_code=model.trust_remote_code)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"model.name_or_path: cannot load {model.name_or_path!r}: {str(exc).splitlines()[0]}") from None
        known = config.to_dict()
        for key in model.config or {}:
            if key not in known:
                raise unknown_key("model.config", key, [k for k in known if not k.startswith("_")])
        config.update({**(model.config or {}), **settings})
        try:
            net = AutoModelForCTC.from_pretrained(source, config=config, revision=model.revision,
                                                  trust_remote_code=model.trust_remote_code, ignore_mismatched_sizes=True)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"model.name_or_path: cannot load {model.name_or_path!r} as a CTC model: {str(exc).splitlines()[0]}") from None
        files, base = weight_files(source, model.revision), BaseRef.pretrained(model.name_or_path, model.revision)
    if model.freeze_feature_encoder:
        audio._freeze_feature_encoder(net)
    ctc.mark_padded_frames(net)
    return BuiltModel(net, describe_model(net), files, base)


def describe_model(net: torch.nn.Module) -> ModelInfo:
    """Blocks bottom to top, the CTC head, and what sits below / above the blocks (stable-layer-norm models
    apply the encoder's layer_norm after the last block, the others before the first)."""
    prefix = net.base_model_prefix
    names = dict(net.named_modules())
    blocks_at = next((n for n in (f"{prefix}.encoder.layers", f"{prefix}.encoder.layer") if n in names), None)
    blocks = [f"{blocks_at}.{i}" for i in range(len(names[blocks_at]))] if blocks_at else []
    below = [f"{prefix}.{n}" for n in ("feature_extractor", "feature_projection", "encoder.pos_conv_embed") if f"{prefix}.{n}" in names]
    norm = f"{prefix}.encoder.layer_norm"
    stable = getattr(net.config, "do_stable_layer_norm", False)
    final = [norm] if norm in names and stable else []
    embeddings = below + ([norm] if norm in names and not stable else [])
    return ModelInfo(family=net.config.model_type, blocks=blocks, head=audio.top_level_head(net), final=final, embeddings=embeddings,
                     modality="audio")


def make_loss(model: ModelConfig, data: DataConfig):
    return ctc.make_ctc_loss(model.ctc_zero_infinity, model.ctc_loss_normalization)


preprocess_logits_for_metrics = ctc.preprocess_logits_for_metrics


def metrics(data: DataConfig, labels: list[str] | None):
    return ctc.make_compute_metrics(labels or [], data.word_delimiter)


def main_metric(data: DataConfig, labels: list[str] | None) -> str:
    return "wer"


def read_inputs(data: DataConfig, values: list[str], file: Path | None) -> Dataset:
    """Clips to transcribe: audio file paths or folders as arguments, and/or --file listing one path per line."""
    paths = audio_data.list_inputs(values, file)
    return Dataset.from_dict({"audio": paths}).cast_column("audio", Audio(decode=False))


def describe_input(row: dict) -> str:
    return audio_data.name_of(row["audio"])


def format_predictions(loaded: Any, rows: Dataset, outputs: np.ndarray, top_k: int = 1) -> list[dict[str, Any]]:
    """One {"input", "text"} per clip: the greedy transcript."""
    texts = ctc.transcripts(outputs, loaded.labels, loaded.info.recipe.data.word_delimiter)
    return [{"input": describe_input(row), "text": text} for row, text in zip(rows, texts)]
