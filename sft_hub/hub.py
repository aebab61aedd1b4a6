"""Publishing a run to the Hugging Face Hub: the upload folder (`export.assemble_upload`) with its model card.

Offline, not logged in, or a malformed repo id: one line that says what to do, before anything is assembled.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from huggingface_hub import HfApi, constants, get_token
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import HFValidationError, validate_repo_id

from sft_hub.card import card_data, render_card, write_model_card  # noqa: F401  (re-exported: the card API)
from sft_hub.errors import SftHubError
from sft_hub.export import assemble_upload


def check_repo_id(repo_id: str) -> None:
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise SftHubError(f"--repo-id {repo_id!r}: not a Hub repo id; use OWNER/NAME (letters, digits, '-', '_', '.')") from None


def _ready_to_push() -> None:
    """Offline or not logged in: say so in one line before anything is assembled."""
    if constants.HF_HUB_OFFLINE:
        raise SftHubError("push: offline (HF_HUB_OFFLINE is set); unset it to upload, or use --dry-run DIR to write the upload folder")
    if not get_token():
        raise SftHubError("push: not logged in to the Hugging Face Hub; log in with `hf auth login` (or set HF_TOKEN)")


def push(run_dir: Path, repo_id: str, private: bool = False, merged: bool = False, dry_run: Path | None = None) -> str:
    """Upload a run's adapter (or merged model) with its card; the token comes from `hf auth login` or HF_TOKEN."""
    check_repo_id(repo_id)
    if dry_run is not None:
        assemble_upload(run_dir, dry_run, merged)
        return str(dry_run)
    _ready_to_push()
    api = HfApi()  # reads the token from the environment or the login cache; it is never written anywhere
    with tempfile.TemporaryDirectory() as tmp:
        folder = assemble_upload(run_dir, Path(tmp) / "upload", merged)
        try:
            url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=f"sft-hub: upload {Path(run_dir).name}")
        except HfHubHTTPError as exc:
            status = getattr(exc.response, "status_code", None)
            hint = "; log in with `hf auth login` (a token with write access)" if status in (401, 403) else ""
            raise SftHubError(f"push to {repo_id}: the Hub said {str(exc).strip().splitlines()[0]}{hint}") from None
        except Exception as exc:  # no network, DNS, proxy (httpx errors are not OSErrors)
            raise SftHubError(f"push to {repo_id}: cannot reach the Hub ({str(exc).strip().splitlines()[0]})") from None
    return str(url)
