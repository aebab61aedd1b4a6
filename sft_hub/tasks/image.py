"""Image classification: any timm architecture as an HF model through `TimmWrapperForImageClassification`.

Models: a Hub checkpoint (`timm/resnet50.a1_in1k`), a local folder (written by `save_pretrained`, or a
timm Hub-layout download), a timm architecture name trained from scratch (`resnet18`), or an
architecture plus a local safetensors weights file (`weights_file`). Data (see `image_data`): class
folders, scikit-learn's digits (`builtin: digits`), or a Hub dataset with image/label columns.
Preprocessing comes from the model's own timm data config (`resolve_data_config`/`create_transform`),
applied on the fly with `Dataset.with_transform`; mixup/cutmix run in the collator as soft labels.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import timm
import torch
from datasets import ClassLabel, Dataset, DatasetDict
from timm.data import create_transform, resolve_data_config
from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

from sft_hub.base_model import BaseRef, weight_files
from sft_hub.model_info import ModelInfo, describe
from sft_hub.schema import suggest
from sft_hub.errors import ConfigError, DataError
from sft_hub.metrics import MultiLabelMetrics, make_compute_metrics
from sft_hub.tasks import image_data
from sft_hub.tasks import labels as label_utils
from sft_hub.tasks import new_head
from sft_hub.tasks import seeding
from sft_hub.tasks.base import BuiltModel, TaskData

BUILTIN = ("digits", "digits_attributes")  # digits_attributes: multi-label (even, prime, loop, large)
PROCESSOR_FILE = "image_processor.json"
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
# timm model classes whose family name differs from the class name
FAMILIES = {"visiontransformer": "vit", "efficientnetfeatures": "efficientnet"}


@dataclass
class ModelConfig:
    PATH_FIELDS: ClassVar[tuple[str, ...]] = ("name_or_path", "weights_file")
    name_or_path: str  # Hub id (timm/resnet50.a1_in1k), local model folder, or timm architecture (resnet18: from scratch)
    revision: str | None = None
    weights_file: str | None = None  # local .safetensors with timm weights for the architecture in name_or_path
    model_args: dict[str, Any] | None = None  # extra `timm.create_model` arguments, e.g. {drop_path_rate: 0.1}
    image_size: int | None = None  # input resolution; default: the model's own data config
    crop_pct: float | None = None  # eval center-crop fraction; default: the model's
    interpolation: str | None = None  # bilinear | bicubic | ...; default: the model's
    mean: list[float] | None = None  # normalisation; default: the model's
    std: list[float] | None = None
    channels_last: bool = False  # NHWC memory format for model and batches (faster convs on recent CPUs/GPUs)

    def validate(self, where: str) -> None:
        kind = source_kind(self.name_or_path)
        if kind == "arch" and not timm.is_model(self.name_or_path):
            hint = suggest(self.name_or_path, timm.list_models()) or " (see timm.list_models(); Hub checkpoints look like timm/resnet50.a1_in1k)"
            raise ConfigError(f"{where}.name_or_path: {self.name_or_path!r} is not a timm architecture, local folder or Hub id{hint}")
        if self.weights_file is not None:
            if kind != "arch":
                raise ConfigError(f"{where}.weights_file: only with a timm architecture name in name_or_path (got {self.name_or_path!r})")
            if not Path(self.weights_file).is_file():
                raise ConfigError(f"{where}.weights_file: file {self.weights_file} not found")
            if not self.weights_file.endswith(".safetensors"):
                raise ConfigError(f"{where}.weights_file: weights are read from safetensors only, got {self.weights_file}")
        if self.image_size is not None and self.image_size < 8:
            raise ConfigError(f"{where}.image_size: must be >= 8, got {self.image_size}")
        if self.interpolation is not None and self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"{where}.interpolation: {self.interpolation!r} is not one of {', '.join(INTERPOLATIONS)}")
        if self.crop_pct is not None and not 0 < self.crop_pct <= 1:
            raise ConfigError(f"{where}.crop_pct: must be in (0, 1], got {self.crop_pct}")
        for key in ("mean", "std"):
            value = getattr(self, key)
            if value is not None and len(value) not in (1, 3):
                raise ConfigError(f"{where}.{key}: give 1 or 3 values, got {len(value)}")


@dataclass
class DataConfig:
    PATH_FIELDS: ClassVar[tuple[str, ...]] = ("folder",)
    folder: str | None = None  # <folder>/{train,val,...}/<class>/*.jpg, or <folder>/<class>/* with validation_fraction
    builtin: str | None = None  # data that ships with a dependency: digits (sklearn, 8x8 grayscale)
    dataset: str | None = None  # a Hub dataset id (beans, cifar10, ...)
    dataset_config: str | None = None
    dataset_revision: str | None = None
    image_column: str = "image"
    label_column: str = "label"
    problem_type: Literal["classification", "multi_label_classification"] = "classification"
    label_delimiter: str | None = None  # multi-label: split label strings on this ("a|b"); a list column needs none
    class_weights: str | dict[str | int, float] | None = None  # "balanced" or label -> weight: loss weight per class (sft_hub/losses.py)
    threshold: float | Literal["per_label", "global"] | None = None  # multi-label decision thresholds; default per_label, chosen on validation
    train_split: str = "train"
    eval_splits: list[str] | None = None
    validation_fraction: float | None = None  # carve a seeded, class-stratified validation split out of train
    split_seed: int | None = None  # seed of that split (default: training.seed)
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    verify_images: bool = True  # decode every image once before training (bad files fail fast, naming the file)
    on_bad_image: Literal["error", "skip"] = "error"  # skip: drop unreadable images, counted in the manifest
    # train-time augmentation (timm `create_transform(is_training=True)`); eval transforms are deterministic
    scale: list[float] | None = None  # random-resized-crop area range; timm default [0.08, 1.0]
    ratio: list[float] | None = None  # its aspect-ratio range; timm default [3/4, 4/3]
    hflip: float = 0.5
    vflip: float = 0.0
    color_jitter: float = 0.4
    auto_augment: str | None = None  # e.g. rand-m9-mstd0.5-inc1 (RandAugment), augmix-m5-w4-d2
    re_prob: float = 0.0  # random erasing probability
    no_aug: bool = False  # train with the eval transform
    mixup: float = 0.0  # mixup alpha (> 0 enables); soft labels
    cutmix: float = 0.0  # cutmix alpha (> 0 enables)
    mixup_prob: float = 1.0
    label_smoothing: float = 0.0  # with mixup/cutmix

    def validate(self, where: str) -> None:
        sources = [k for k in ("folder", "builtin", "dataset") if getattr(self, k)]
        if len(sources) != 1:
            raise ConfigError(f"{where}: give exactly one of folder, builtin or dataset (got {sources or 'none'})")
        if self.builtin and self.builtin not in BUILTIN:
            raise ConfigError(f"{where}.builtin: unknown built-in data '{self.builtin}' (known: {', '.join(BUILTIN)})")
        if self.validation_fraction is not None and not 0 < self.validation_fraction < 1:
            raise ConfigError(f"{where}.validation_fraction: must be between 0 and 1, got {self.validation_fraction}")
        for key in ("scale", "ratio"):
            value = getattr(self, key)
            if value is not None and (len(value) != 2 or not 0 < value[0] <= value[1] or key == "scale" and value[1] > 1):
                raise ConfigError(f"{where}.{key}: give [low, high] with 0 < low <= high{' <= 1' if key == 'scale' else ''}, got {value}")
        for key in ("hflip", "vflip", "re_prob", "mixup_prob"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"{where}.{key}: a probability between 0 and 1, got {getattr(self, key)}")
        for key in ("mixup", "cutmix", "color_jitter"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{where}.{key}: must be >= 0, got {getattr(self, key)}")
        if not 0 <= self.label_smoothing < 1 or self.label_smoothing and not (self.mixup or self.cutmix):
            raise ConfigError(f"{where}.label_smoothing: in [0, 1) and only with mixup or cutmix (soft labels), got {self.label_smoothing}")
        multi = self.problem_type == label_utils.MULTI_LABEL
        if multi and self.folder:
            raise ConfigError(f"{where}.problem_type: class folders hold one label per image; multi-label images need a dataset with a label-list column")
        if (self.builtin == "digits_attributes") != (multi and self.builtin is not None):
            raise ConfigError(f"{where}.problem_type: builtin {self.builtin} is {'multi-label' if self.builtin == 'digits_attributes' else 'single-label'}; "
                              f"set problem_type: {label_utils.MULTI_LABEL if self.builtin == 'digits_attributes' else 'classification'}")
        if multi and (self.mixup or self.cutmix):
            raise ConfigError(f"{where}.mixup: mixup/cutmix mix one-hot labels; not supported with problem_type: {label_utils.MULTI_LABEL}")
        label_utils.check_label_options(self, where)
        if self.on_bad_image == "skip" and not self.verify_images:
            raise ConfigError(f"{where}.on_bad_image: skip needs verify_images: true (bad images are found and counted up front)")
        if self.auto_augment:
            try:
                create_transform(32, is_training=True, auto_augment=self.auto_augment)
            except Exception as exc:
                raise ConfigError(f"{where}.auto_augment: {self.auto_augment!r} is not a timm augmentation policy ({exc})") from None


def source_kind(name_or_path: str) -> str:
    """'folder' (local), 'hub' (owner/name) or 'arch' (a timm architecture name, built from its config)."""
    if Path(name_or_path).is_dir():
        return "folder"
    return "hub" if "/" in name_or_path else "arch"


def load_data(data: DataConfig, seed: int) -> TaskData:
    if data.folder:
        raw, origin = image_data.load_folder(data.folder, data.train_split), f"folder {data.folder}"
    elif data.builtin:
        raw, origin = image_data.load_digits_splits(attributes=data.builtin == "digits_attributes"), f"built-in {data.builtin} (sklearn)"
    else:
        raw = image_data.load_hub(data.dataset, data.dataset_config, data.dataset_revision, data.image_column, data.label_column)
        origin = f"dataset {data.dataset}"
    evals = data.eval_splits
    if data.validation_fraction is not None:
        if data.train_split not in raw:
            raise DataError(f"data.train_split: split {data.train_split!r} not found; splits are {', '.join(raw)}")
        train, held = image_data.stratified_holdout(raw[data.train_split], data.validation_fraction,
                                                    seed if data.split_seed is None else data.split_seed)
        name = label_utils.holdout_name(raw)
        raw = DatasetDict({**raw, data.train_split: train, name: held})
        evals = evals or [name]
    splits, train_split, evals = label_utils.choose_splits(raw, data.train_split, evals, None, seed)
    multi = data.problem_type == label_utils.MULTI_LABEL
    if multi:
        splits, labels = label_utils.encode_multi_labels(splits, train_split, evals, data.label_delimiter)
    else:
        splits, labels = label_utils.encode_labels(splits, train_split, evals, "classification")
    splits = label_utils.limit(splits, train_split, evals, data.max_train_samples, data.max_eval_samples, seed)
    info: dict[str, Any] = {"source": origin, "verified": data.verify_images}
    if data.verify_images:
        splits, checked = image_data.check_images(splits, data.on_bad_image)
        info.update(checked)
    if not multi:
        splits = DatasetDict({n: ds.cast_column("labels", ClassLabel(names=labels)) for n, ds in splits.items()})
    return TaskData(splits=splits, train_split=train_split, eval_splits=evals, labels=labels, info=info, multi_label=multi)


@dataclass
class ImageProcessor:
    """timm's resolved data config (input_size, interpolation, mean, std, crop_pct, crop_mode) and the batch layout."""

    data_config: dict[str, Any]
    channels_last: bool = False

    def transform(self, data: DataConfig | None = None):
        """timm's train (with `data`) or eval transform, ending in a uint8 tensor: the collator normalises whole batches."""
        cfg = self.data_config
        if data is None or data.no_aug:
            return create_transform(**cfg, is_training=False, use_prefetcher=True)
        return create_transform(
            cfg["input_size"], is_training=True, scale=data.scale, ratio=data.ratio, hflip=data.hflip, vflip=data.vflip,
            color_jitter=data.color_jitter, auto_augment=data.auto_augment, interpolation=cfg["interpolation"],
            mean=cfg["mean"], std=cfg["std"], use_prefetcher=True)


def _timm_pretrained_cfg(model: ModelConfig) -> dict[str, Any]:
    kind = source_kind(model.name_or_path)
    if kind != "arch":
        try:
            config = TimmWrapperConfig.from_pretrained(model.name_or_path, revision=model.revision, num_labels=1)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"model.name_or_path: cannot load {model.name_or_path!r}: {str(exc).splitlines()[0]}") from None
        if getattr(config, "pretrained_cfg", None):
            return dict(config.pretrained_cfg)
        arch = config.architecture
    else:
        arch = model.name_or_path
    cfg = timm.models.get_pretrained_cfg(arch)
    return cfg.to_dict() if cfg is not None else {}


def resolved_data_config(model: ModelConfig) -> dict[str, Any]:
    overrides = {"img_size": model.image_size, "crop_pct": model.crop_pct, "interpolation": model.interpolation,
                 "mean": model.mean, "std": model.std}
    cfg = resolve_data_config({k: v for k, v in overrides.items() if v is not None}, pretrained_cfg=_timm_pretrained_cfg(model))
    return {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}


def load_processor(model: ModelConfig, saved: Path | None = None) -> ImageProcessor:
    if saved is not None:
        try:
            raw = json.loads((saved / PROCESSOR_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"{saved / PROCESSOR_FILE}: cannot read the image processor: {exc}") from None
        cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in raw["data_config"].items()}
        return ImageProcessor(cfg, bool(raw.get("channels_last", False)))
    return ImageProcessor(resolved_data_config(model), model.channels_last)


def save_processor(processor: ImageProcessor, path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / PROCESSOR_FILE).write_text(json.dumps({"format": "sft-hub-image-processor/1", **asdict(processor)}, indent=2) + "\n")


def encode(splits: DatasetDict, processor: ImageProcessor, data: DataConfig, model: ModelConfig, train_split: str | None) -> DatasetDict:
    """Decode and transform on the fly (`with_transform`): nothing is written to disk; train rows get augmentation."""
    out = {}
    for name, ds in splits.items():
        if name == train_split:
            feature = ds.features.get("labels")
            classes = feature.num_classes if isinstance(feature, ClassLabel) else 0
            out[name] = seeding.with_rows(ds).with_transform(image_data.DecodeTransform(processor.transform(data), train_classes=classes))
        else:
            out[name] = ds.with_transform(image_data.DecodeTransform(processor.transform()))
    return DatasetDict(out)


def collator(processor: ImageProcessor, data: DataConfig) -> image_data.Collator:
    cfg = processor.data_config
    mixup = {"mixup_alpha": data.mixup, "cutmix_alpha": data.cutmix, "prob": data.mixup_prob, "label_smoothing": data.label_smoothing}
    return image_data.Collator(cfg["mean"], cfg["std"], processor.channels_last, data.re_prob,
                               mixup if data.mixup > 0 or data.cutmix > 0 else None)


def _head_modules(net: TimmWrapperForImageClassification) -> list[str]:
    classifier = net.timm_model.pretrained_cfg.get("classifier") or ()
    names = [f"timm_model.{c}" for c in ([classifier] if isinstance(classifier, str) else classifier)]
    modules = dict(net.named_modules())
    found = [n for n in names if n in modules and any(True for _ in modules[n].parameters())]
    if found:
        return found
    outputs = [n for n, m in modules.items() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and
               getattr(m, "out_features", getattr(m, "out_channels", None)) == net.config.num_labels]
    if not outputs:
        raise ConfigError(f"model: cannot find the classifier of timm architecture {net.config.architecture!r}")
    return outputs[-1:]


def _load_weights_file(net: TimmWrapperForImageClassification, path: str, head: list[str]) -> None:
    from safetensors.torch import load_file

    try:
        state = {k.removeprefix("timm_model."): v for k, v in load_file(path).items()}
    except Exception as exc:
        raise ConfigError(f"model.weights_file: cannot read {path}: {str(exc).splitlines()[0]}") from None
    own = net.timm_model.state_dict()
    heads = tuple(h.removeprefix("timm_model.") + "." for h in head)
    keep = {k: v for k, v in state.items() if not (k.startswith(heads) and k in own and own[k].shape != v.shape)}
    unexpected = [k for k in keep if k not in own]
    missing = [k for k in own if k not in keep and not k.startswith(heads)]
    wrong = [k for k in keep if k in own and own[k].shape != keep[k].shape]
    for what, keys in (("unexpected weight", unexpected), ("missing weight", missing), ("wrong shape for", wrong)):
        if keys:
            raise ConfigError(f"model.weights_file: {path} does not fit {net.config.architecture}: {what} {keys[0]} ({len(keys)} in all)")
    net.timm_model.load_state_dict(keep, strict=False)


def _to_channels_last(net: torch.nn.Module) -> None:
    """NHWC weights; 1x1 kernels keep plain strides (same memory either way) so flat byte views of them still work."""
    net.to(memory_format=torch.channels_last)
    for p in net.parameters():
        if p.dim() == 4 and p.shape[-2:] == (1, 1) and p.stride(-1) != 1:
            p.data = torch.empty_like(p.data, memory_format=torch.contiguous_format).copy_(p.data)


def build_model(model: ModelConfig, labels: list[str] | None) -> BuiltModel:
    if labels is None:
        raise ConfigError("task: image_classification predicts classes; regression labels are not supported")
    kwargs = {"num_labels": len(labels), "id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in enumerate(labels)}}
    kind, pretrained_cfg = source_kind(model.name_or_path), _timm_pretrained_cfg(model)
    fixed = pretrained_cfg.get("input_size", (0, 0, 0))[-1] if pretrained_cfg.get("fixed_input_size") else None
    if kind != "arch" and model.image_size and fixed and model.image_size != fixed:
        raise ConfigError(f"model.image_size: {model.name_or_path} was trained at a fixed {fixed} px (position embeddings); "
                          f"leave image_size unset or train the architecture from scratch")
    if kind == "arch":
        args = dict(model.model_args or {})
        if model.image_size and fixed:  # ViT-like: position embeddings follow the size
            args.setdefault("img_size", model.image_size)
        config = TimmWrapperConfig(architecture=model.name_or_path, model_args=args or None, **kwargs)
        config.pretrained_cfg = {**pretrained_cfg, **resolved_data_config(model)}  # AutoImageProcessor reads it
        net = TimmWrapperForImageClassification(config)
        files, base = [], BaseRef.scratch(model.name_or_path)
        if model.weights_file:
            _load_weights_file(net, model.weights_file, _head_modules(net))
            files, base = [Path(model.weights_file)], BaseRef("local", model.name_or_path, path=str(Path(model.weights_file).resolve()))
    else:
        try:
            config = TimmWrapperConfig.from_pretrained(model.name_or_path, revision=model.revision, **kwargs)
            # timm >= 1.0.2x records num_classes in model_args; the wrapper passes num_labels itself
            config.model_args = {k: v for k, v in {**(config.model_args or {}), **(model.model_args or {})}.items() if k != "num_classes"} or None
            net, info = TimmWrapperForImageClassification.from_pretrained(
                model.name_or_path, config=config, revision=model.revision, ignore_mismatched_sizes=True, output_loading_info=True)
        except (OSError, ValueError, ImportError) as exc:
            raise ConfigError(f"model.name_or_path: cannot load {model.name_or_path!r}: {str(exc).splitlines()[0]}") from None
        head = _head_modules(net)
        initialised = [*info["missing_keys"], *(m[0] for m in info["mismatched_keys"])]
        fresh = [k for k in initialised if not k.startswith(tuple(h + "." for h in head))]
        if fresh:  # only the classifier may start from scratch (e.g. a ViT at another image_size would lose its position embeddings)
            raise ConfigError(f"model: {model.name_or_path} does not fit {config.architecture} with these settings: "
                              f"{sorted(fresh)[0]} would be newly initialised ({len(fresh)} weights in all)")
        saved = TimmWrapperConfig.from_pretrained(model.name_or_path, revision=model.revision)  # its own labels, not overridden
        new_head.renew_head(net, head, new_head.checkpoint_labels(saved), labels, initialised)
        files, base = weight_files(model.name_or_path, model.revision), BaseRef.pretrained(model.name_or_path, model.revision)
        # keep the data config (with this recipe's overrides) in config.json: AutoImageProcessor reads it
        net.config.pretrained_cfg = {**(getattr(net.config, "pretrained_cfg", None) or {}), **resolved_data_config(model)}
    if model.channels_last:
        _to_channels_last(net)
    return BuiltModel(net, describe_model(net), files, base)


def describe_model(model: torch.nn.Module, head: list[str] | None = None) -> ModelInfo:
    """Family from the timm model class (ResNet -> "resnet", VisionTransformer -> "vit"); blocks = ResNet
    stages (`layerN`), ViT / EfficientNet `blocks`, ConvNeXt `stages`, found from the module tree."""
    name = type(model.timm_model).__name__.lower() if hasattr(model, "timm_model") else type(model).__name__.lower()
    return describe(model, FAMILIES.get(name, name), head if head is not None else _head_modules(model), "image")


def metrics(data: DataConfig, labels: list[str] | None):
    if data.problem_type == label_utils.MULTI_LABEL:
        return MultiLabelMetrics(len(labels or []))
    return make_compute_metrics(regression=False, extras=("f1",) if labels is not None and len(labels) == 2 else ())


def main_metric(data: DataConfig, labels: list[str] | None) -> str:
    return "mAP" if data.problem_type == label_utils.MULTI_LABEL else "accuracy"


def read_inputs(data: DataConfig, values: list[str], file: Path | None) -> Dataset:
    """Images to predict: file paths or folders as arguments, or --file with one image path per line."""
    return image_data.list_inputs(values, file)


def describe_input(row: dict) -> str:
    return image_data.image_name(row["image"])
