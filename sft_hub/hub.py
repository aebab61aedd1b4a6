"""Publishing a run to the Hugging Face Hub: the upload folder (`export.assemble_upload`) with its model card."""

from __future__ import annotations

import tempfile
from pathlib import Path

from huggingface_hub import HfApi

from sft_hub.card import card_data, render_card, write_model_card  # noqa: F401  (re-exported: the card API)
from sft_hub.export import assemble_upload


def push(run_dir: Path, repo_id: str, private: bool = False, merged: bool = False, dry_run: Path | None = None) -> str:
    """Upload a run's adapter (or merged model) with its card; the token comes from `hf auth login` or HF_TOKEN."""
    if dry_run is not None:
        assemble_upload(run_dir, dry_run, merged)
        return str(dry_run)
    api = HfApi()  # reads the token from the environment or the login cache; it is never written anywhere
    with tempfile.TemporaryDirectory() as tmp:
        folder = assemble_upload(run_dir, Path(tmp) / "upload", merged)
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=f"sft-hub: upload {Path(run_dir).name}")
    return str(url)
