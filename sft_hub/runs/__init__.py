"""The run directory: `Run` (the object the engine writes through and every reader opens), `BaseRef`, and the
file helpers of the run-dir contract (`files`), re-exported here.

```
<run>/recipe.yaml        resolved recipe (local paths absolute; re-running it reproduces the run)
<run>/manifest.json      format sft-hub-run/2: base (a BaseRef + fingerprints), strategy, labels, versions, seed, metrics
<run>/adapter|head|model what the strategy learned (`strategy.saved_as`; safetensors); <run>/base when the base had no files
<run>/processor/         tokenizer / feature extractor / image config used for inputs
<run>/check_inputs.safetensors  a few encoded eval inputs (export's check, without the training data)
<run>/checkpoints/checkpoint-N/COMPLETE   a checkpoint counts only once this marker exists
<run>/eval_results.json, metrics.jsonl, README.md (model card)
```
"""

from sft_hub.base_model import BaseRef
from sft_hub.runs.files import (
    CHECK_INPUTS,
    COMPLETE,
    EVAL_RESULTS,
    LABELS,
    MANIFEST,
    METRICS_LOG,
    RECIPE,
    SAME_RUN_KEYS,
    check_output_dir,
    checkpoints,
    latest_complete_checkpoint,
    mark_complete,
    read_json,
    recipe_differences,
    rotate,
    share_like_umask,
    write_json,
    write_recipe,
)
from sft_hub.runs.run import MANIFEST_FORMAT, Run, verify_base

__all__ = [
    "BaseRef", "Run", "MANIFEST_FORMAT", "verify_base",
    "CHECK_INPUTS", "COMPLETE", "EVAL_RESULTS", "LABELS", "MANIFEST", "METRICS_LOG", "RECIPE", "SAME_RUN_KEYS",
    "check_output_dir", "checkpoints", "latest_complete_checkpoint", "mark_complete", "read_json", "recipe_differences", "rotate",
    "share_like_umask", "write_json", "write_recipe",
]
