"""The report's part of the model card: the figures and the per-class table, referenced relative to the card.

The card embeds only what is safe to publish with a model (curves, confusion matrices, per-class numbers),
never the worst-mistakes examples, which show the user's data; `copy_for_upload` puts exactly the files
the card references beside it in the upload folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

CARD_FILES = ("curves.png", "confusion_matrix.png", "confusion_matrix_normalized.png", "per_class.md", "per_class.json")


def card_section(report_dir: Path) -> str:
    """Markdown for README.md beside `report_dir` ('' when there is no report)."""
    report_dir = Path(report_dir)
    parts = []
    if (report_dir / "curves.png").is_file():
        parts.append("![Training curves: loss, learning rate and eval metrics against step](report/curves.png)")
    if (report_dir / "confusion_matrix_normalized.png").is_file():
        parts.append("![Confusion matrix, each true class's row normalised](report/confusion_matrix_normalized.png)")
    if (report_dir / "per_class.md").is_file():
        parts.append("Per-class results:\n\n" + (report_dir / "per_class.md").read_text().strip())
    if not parts:
        return ""
    return "## Report\n\n" + "\n\n".join(parts) + "\n"


def copy_for_upload(run_dir: Path, folder: Path) -> None:
    source = Path(run_dir) / "report"
    names = [n for n in CARD_FILES if (source / n).is_file()]
    if names:
        (Path(folder) / "report").mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copy2(source / name, Path(folder) / "report" / name)
