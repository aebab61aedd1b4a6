"""A text training process does not load what it does not use before training (memory: benchmarks/memory.py).

scikit-learn (~40 MB resident) and timm (~22 MB) are imported where they are used (metrics at the first
evaluation, the linear probe, EMA, image tasks), not by the engine, the CLI or the text task.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_text_training_imports_no_sklearn_or_timm() -> None:
    code = ("import json, sys; import sft_hub.cli, sft_hub.engine, sft_hub.strategies, sft_hub.tasks.text, sft_hub.inference; "
            "print(json.dumps(sorted(m for m in ('sklearn', 'scipy.stats', 'timm') if m in sys.modules)))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_metrics_still_work_when_imported_lazily() -> None:
    from sft_hub import metrics

    out = metrics.classification_metrics([0, 1, 1, 0], [0, 1, 0, 0], extras=("f1", "mcc"))
    assert out["accuracy"] == 0.75 and out["f1"] == 2 / 3
    assert metrics.regression_metrics([1.0, 2.0, 3.0], [1.0, 2.0, 4.0])["spearmanr"] == 1.0
    assert metrics.confusion([0, 1, 1], [0, 1, 0], 2) == [[1, 1], [0, 1]]
