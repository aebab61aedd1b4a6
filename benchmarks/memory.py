"""Peak memory (RSS) of LoRA training against full fine-tuning, MiniLM-L6 and ResNet-18, one subprocess each.

Each child process imports the libraries, builds the model, applies the strategy (the strategy's
`apply`, so LoRA runs `lora_fast`) and, as the engine does, `fast_dropout` (the model's dropout layers keep
a boolean mask for backward instead of torch's float noise), makes the engine's optimizer (`Trainer.create_optimizer`)
and trains `--steps` steps on fixed batches: MiniLM on the longest length-grouped SST-2 batch of 32
(the sampler puts it first, so it sets a run's peak), ResNet-18 (from its config, as offline) on a
batch of 32 random 224 px images. It reports RSS after imports, after building the model (and the
optimizer), and the peak (`ru_maxrss`). The table splits the peak into the part every process pays
(interpreter, libraries, the model's weights) and what training adds on top, and says what that is made of:
- `saved acts`: the bytes autograd keeps for backward in one forward (unique storages seen by
  `saved_tensors_hooks`, parameters excluded), measured in one extra forward after the peak was read;
- `grads+optim`: gradients of the trainable parameters plus the optimizer's state tensors;
- `heap free`: bytes glibc malloc holds free in its heap at the end of the last forward (freed tensors
  the allocator keeps for reuse; they stay in RSS): the allocator's share of the peak.
`lora-peft` is LoRA through peft's own forward and torch's dropout (before `lora_fast`), `lora` as the engine trains now.
`--engine` adds rows for a real `sft-hub train` process (MiniLM, the first 2000 SST-2 sentences,
`--engine-steps` steps of 32, length-grouped, eval on 32 rows): the training loop's peak from the run's
manifest (`resources`) and the whole process's peak (`wait4`), which includes evaluation, report and saving.
Its sampler yields the longest batch first, when full fine-tuning has no optimizer state yet, so a run
needs enough steps for a later long batch to meet that state; the rows above repeat the longest batch.

    python benchmarks/memory.py [--steps 3] [--repeats 1] [--engine] [--engine-steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared" / "data" / "glue" / "SST-2"
MB = 2**20


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def heap_free_mb() -> float:
    """Free bytes inside glibc malloc's arenas (`mallinfo2().fordblks`); NaN where that is not glibc."""
    try:
        import ctypes

        class MallInfo2(ctypes.Structure):
            _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = MallInfo2
        return libc.mallinfo2().fordblks / MB
    except (OSError, AttributeError):
        return float("nan")


def saved_activations_mb(net, batch: dict) -> float:
    """Bytes autograd saves for backward in one forward: unique storages, the model's own tensors excluded."""
    import torch

    own = {t.untyped_storage().data_ptr() for t in [*net.parameters(), *net.buffers()]}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in own:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = net(**batch)
    del out
    return sum(seen.values()) / MB


def child(model: str, strategy: str, steps: int) -> dict:
    sys.path.insert(0, str(ROOT))
    import logging

    import torch
    import transformers
    from transformers import Trainer, set_seed

    from sft_hub.strategies import parse_strategy
    from sft_hub.training_args import build_training_args

    logging.disable(logging.WARNING)
    transformers.logging.set_verbosity_error()
    import datasets

    datasets.disable_progress_bars()
    out = {"imports": rss_mb()}
    set_seed(0)
    if model == "minilm":
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from lora_step import sst2_batches

        from sft_hub.tasks import text

        batch = sst2_batches(SST2, 2000)[0]  # the longest batch: the sampler yields it first
        built = text.build_model(text.ModelConfig("embedded/all-MiniLM-L6-v2"), ["negative", "positive"])
        lora = {"name": "lora", "r": 8, "alpha": 16, "dropout": 0.1, "target_modules": ["query", "key", "value", "dense"]}
    else:
        from sft_hub.tasks import image

        built = image.build_model(image.ModelConfig("resnet18"), ["ants", "bees"])
        batch = {"pixel_values": torch.randn(32, 3, 224, 224), "labels": torch.randint(0, 2, (32,))}
        lora = {"name": "lora", "r": 16, "alpha": 16}  # the resnet family's default targets
    net = parse_strategy({"name": "full"} if strategy == "full" else lora).apply(built.model, built.info)
    if strategy == "lora-peft":  # peft's own forward and torch's dropout: what the lora strategy ran before lora_fast
        from sft_hub import lora_fast

        lora_fast.uninstall(net)
    else:
        from sft_hub import fast_dropout

        fast_dropout.install(net)  # as the engine does: the model's dropout keeps a boolean mask
    net.train()
    args = build_training_args({"learning_rate": 1e-4, "report_to": "none"}, Path(tempfile.mkdtemp()))
    optimizer = Trainer(model=net, args=args).create_optimizer()
    out["model built"] = rss_mb()
    start = time.process_time()
    for _ in range(steps):
        loss = net(**batch).loss
        out["heap free"] = heap_free_mb()
        loss.backward()
        del loss
        grads = sum(p.grad.numel() * p.grad.element_size() for p in net.parameters() if p.grad is not None)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    out["step cpu s"] = (time.process_time() - start) / steps
    out["peak"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t))
    out["grads+optim"] = (grads + state) / MB
    out["saved acts"] = saved_activations_mb(net, batch)
    out["trainable"] = sum(p.numel() for p in net.parameters() if p.requires_grad)
    return out


ENGINE_STRATEGIES = {
    "full": ({"name": "full"}, 5e-5),
    "lora": ({"name": "lora", "r": 8, "alpha": 16, "dropout": 0.1, "target_modules": ["query", "key", "value", "dense"]}, 1e-3),
}


def engine_run(strategy: str, steps: int) -> dict:
    """One `sft-hub train` process on a small SST-2 run; its training loop's peak and the whole process's peak."""
    import yaml

    spec, lr = ENGINE_STRATEGIES[strategy]
    with tempfile.TemporaryDirectory(prefix="sft-hub-mem-") as tmp:
        recipe = {
            "task": "text_classification",
            "model": {"name_or_path": "embedded/all-MiniLM-L6-v2"},
            "data": {"glue": "sst2", "data_dir": str(SST2), "max_length": 128, "max_train_samples": 2000, "max_eval_samples": 32},
            "strategy": spec,
            "training": {"output_dir": f"{tmp}/run", "learning_rate": lr, "max_steps": steps, "per_device_train_batch_size": 32,
                         "per_device_eval_batch_size": 32, "group_by_length": True, "eval_strategy": "no",
                         "save_strategy": "no", "report_to": "none", "seed": 42},
        }
        (Path(tmp) / "recipe.yaml").write_text(yaml.safe_dump(recipe))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        with open(Path(tmp) / "log.txt", "w+") as log:
            proc = subprocess.Popen([sys.executable, "-m", "sft_hub", "train", f"{tmp}/recipe.yaml"], cwd=tmp, env=env,
                                    stdout=log, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (RUSAGE_CHILDREN mixes every child)
            if os.waitstatus_to_exitcode(status):
                log.seek(0)
                raise SystemExit(f"sft-hub train ({strategy}) failed:\n{log.read()[-2000:]}")
        manifest = json.loads((Path(tmp) / "run" / "manifest.json").read_text())
        return {"training loop peak": manifest["resources"]["peak_rss_bytes"] / MB, "process peak": usage.ru_maxrss / 1024}

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--repeats", type=int, default=1, help="child processes per (model, strategy); the median counts")
    p.add_argument("--engine", action="store_true", help="also measure real `sft-hub train` processes (MiniLM on SST-2)")
    p.add_argument("--engine-steps", type=int, default=20, help="training steps of each `sft-hub train` process")
    p.add_argument("--child", nargs=2, metavar=("MODEL", "STRATEGY"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(*a.child, a.steps)))
        return
    models = ["minilm", "resnet18"] if (SST2 / "train.tsv").is_file() else ["resnet18"]
    results: dict[tuple[str, str], dict] = {}
    for model in models:
        runs: dict[str, list[dict]] = {"full": [], "lora-peft": [], "lora": []}
        for _ in range(a.repeats):
            for strategy in runs:
                cmd = [sys.executable, __file__, "--child", model, strategy, "--steps", str(a.steps)]
                done = subprocess.run(cmd, capture_output=True, text=True, check=True)
                runs[strategy].append(json.loads(done.stdout.strip().splitlines()[-1]))
        for strategy, items in runs.items():
            results[(model, strategy)] = {k: statistics.median(r[k] for r in items) for k in items[0]}
    print(f"peak RSS over {a.steps} training steps, one fresh process per row, median of {a.repeats}; MB = MiB")
    print()
    cols = ["model", "strategy", "trainable params", "after imports MB", "model built MB", "peak MB", "training adds MB",
            "peak ratio lora/full", "saved acts MB", "grads+optim MB", "heap free MB", "step CPU s"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("---" if i < 2 else "---:" for i in range(len(cols))) + "|")
    for (model, strategy), r in results.items():
        full = results[(model, "full")]
        print(f"| {model} | {strategy} | {int(r['trainable']):,} | {r['imports']:.0f} | {r['model built']:.0f} | {r['peak']:.0f} | "
              f"{r['peak'] - r['model built']:.0f} | {r['peak'] / full['peak']:.2f} | {r['saved acts']:.0f} | {r['grads+optim']:.0f} | "
              f"{r['heap free']:.0f} | {r['step cpu s']:.2f} |")
    if a.engine and (SST2 / "train.tsv").is_file():
        print()
        print(f"`sft-hub train` processes (MiniLM, SST-2, {a.engine_steps} steps of 32; a fresh process per row)")
        print()
        print("| strategy | training loop peak MB | ratio lora/full | process peak MB | ratio lora/full |")
        print("|---|---:|---:|---:|---:|")
        engine = {s: engine_run(s, a.engine_steps) for s in ("full", "lora")}
        for s in ("full", "lora"):
            r, f = engine[s], engine["full"]
            print(f"| {s} | {r['training loop peak']:.0f} | {r['training loop peak'] / f['training loop peak']:.2f} | "
                  f"{r['process peak']:.0f} | {r['process peak'] / f['process peak']:.2f} |")


if __name__ == "__main__":
    main()
