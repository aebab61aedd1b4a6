"""What leaves the machine on `push`: the base named by Hub id and revision, and no local path in any file.

A run dir records its base as the user wrote it (a local folder, an embedded alias whose files sit in
site-packages). Nobody who downloads an adapter can use that. The upload folder instead names the
base by its Hub id (`base_model.hub_reference`): in `adapter_config.json` (peft's
`base_model_name_or_path` and `revision`), in `manifest.json` and in the model card. A local folder
with no known Hub id is said to be one (card and a warning); every other absolute path in uploaded
JSON / YAML is cut to its last component, and a final scan refuses an upload that still holds one.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import site
import sys
from pathlib import Path
from typing import Any

from sft_hub.base_model import BaseRef, hub_reference
from sft_hub.errors import RunError

log = logging.getLogger("sft_hub")
LOCAL = "<local>/"


def base_ref(manifest: dict) -> dict[str, Any]:
    """{"hub_id", "revision", "local_name", "from_scratch"} for the run's base."""
    ref = BaseRef.from_manifest(manifest["base"])
    if ref.from_scratch:
        return {"hub_id": None, "revision": None, "local_name": None, "from_scratch": True}
    name = str(ref.name or "")
    hub_id, revision = (ref.hub_id, ref.revision) if ref.hub_id else hub_reference(name, ref.revision)
    return {"hub_id": hub_id, "revision": revision, "local_name": None if hub_id else Path(name).name, "from_scratch": False}


def _scrub(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    if isinstance(value, str) and (os.path.isabs(value) or value.startswith("~") or (os.sep in value and Path(value).exists())):
        return LOCAL + Path(value).name
    return value


def public_manifest(manifest: dict, ref: dict) -> dict:
    out = copy.deepcopy(manifest)
    if not ref["from_scratch"]:
        out["base"]["name_or_path"] = ref["hub_id"]
        out["base"]["revision"] = ref["revision"]
        out["base"]["resolved"] = ref["hub_id"]
        if "ref" in out["base"]:  # format 2: the typed reference says the same
            out["base"]["ref"] = ({"kind": "hub", "name": ref["hub_id"], "revision": ref["revision"], "hub_id": ref["hub_id"]}
                                  if ref["hub_id"] else {"kind": "local", "name": ref["local_name"]})
        if not ref["hub_id"]:
            out["base"]["local_folder"] = ref["local_name"]  # no Hub id known: only its name and weight hashes
    return _scrub(out)


def public_recipe(raw: dict, ref: dict) -> dict:
    out = copy.deepcopy(raw)
    if not ref["from_scratch"] and isinstance(out.get("model"), dict):
        out["model"]["name_or_path"] = ref["hub_id"] or LOCAL + str(ref["local_name"])
        if ref["revision"]:
            out["model"]["revision"] = ref["revision"]
    return _scrub(out)


def fix_adapter_config(folder: Path, ref: dict) -> None:
    """peft wrote the local path it loaded the base from; name the Hub id (None when unknown) instead."""
    path = folder / "adapter_config.json"
    if not path.is_file():
        return
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = ref["hub_id"]
    config["revision"] = ref["revision"]
    path.write_text(json.dumps(_scrub(config), indent=2, sort_keys=True) + "\n")


def warn_if_unnamed(ref: dict, run_dir: Path) -> None:
    if not ref["from_scratch"] and not ref["hub_id"]:
        log.warning("%s: the base is a local folder (%s) with no known Hub id; the upload cannot name it, so whoever "
                    "downloads it needs that base themselves (its weight hashes are in manifest.json)", run_dir, ref["local_name"])


def _private_markers(run_dir: Path, manifest: dict) -> list[str]:
    markers = {str(Path(run_dir).resolve()), str(Path.home()), "site-packages", sys.prefix}
    resolved = str(manifest["base"].get("resolved") or "")
    if os.path.isabs(resolved):
        markers.add(str(Path(resolved).parent))
    for p in site.getsitepackages() if hasattr(site, "getsitepackages") else []:
        markers.add(p)
    return sorted(m for m in markers if len(m) > 1)


def _header(f: Path) -> bytes:
    with open(f, "rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        return fh.read(min(size, 100_000_000))


def check_no_local_paths(folder: Path, run_dir: Path, manifest: dict) -> None:
    """Refuse an upload folder in which any file still names a local path (run dir, home, the venv)."""
    markers = [m.encode() for m in _private_markers(run_dir, manifest)]
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            data = _header(f) if f.suffix == ".safetensors" else f.read_bytes()  # weights: only the JSON header can hold text
            hit = next((m for m in markers if m in data), None)
            if hit is not None:
                raise RunError(f"refusing to upload {f.name}: it names the local path {hit.decode()!r} (report this as a bug)")
