"""Reports (`RUN/report/`, the comparison of runs, the model card's report section), TensorBoard event files,
and the quiet console (no load report for the re-attached head, one summary at the end)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, text_recipe, write_sentiment_csv
from PIL import Image
from sklearn.metrics import precision_recall_fscore_support

from sft_hub.config import parse_recipe
from sft_hub.engine import train
from sft_hub.inference import load_run, logits
from sft_hub.report import mistakes

FIGURES = ("curves.png", "confusion_matrix.png", "confusion_matrix_normalized.png")


def _valid_png(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG"
        return img.size


def _text_run(tiny_bert: Path, root: Path, name: str, **training) -> Path:
    (root / f"data_{name}").mkdir()
    files = write_sentiment_csv(root / f"data_{name}", n_train=48, n_val=24)
    raw = text_recipe(tiny_bert, files, root / name, eval_strategy="steps", eval_steps=3, **training)
    train(parse_recipe(raw))
    return root / name


@pytest.fixture(scope="module")
def text_run(tiny_bert, tmp_path_factory) -> Path:
    # group_by_length: Trainer's eval sampler would then group by length too; the report must pair rows with their predictions
    return _text_run(tiny_bert, tmp_path_factory.mktemp("report"), "text", report_to="tensorboard", group_by_length=True)


def test_text_run_report_matches_sklearn_and_sorts_mistakes(text_run: Path):
    report = text_run / "report"
    for name in FIGURES:
        width, height = _valid_png(report / name)
        assert width > 200 and height > 200
    table = json.loads((report / "per_class.json").read_text())
    loaded = load_run(text_run)
    rows = loaded.task.load_data(loaded.info.recipe.data, 7).splits["validation"]
    out = logits(loaded, rows)
    labels, preds = np.asarray(rows["labels"]), out.argmax(-1)
    p, r, f, s = precision_recall_fscore_support(labels, preds, labels=[0, 1], zero_division=0)
    assert table["split"] == "validation" and [c["label"] for c in table["classes"]] == loaded.labels
    assert [c["precision"] for c in table["classes"]] == pytest.approx(p.tolist())
    assert [c["recall"] for c in table["classes"]] == pytest.approx(r.tolist())
    assert [c["f1"] for c in table["classes"]] == pytest.approx(f.tolist())
    assert [c["support"] for c in table["classes"]] == s.tolist() and sum(map(sum, table["confusion_matrix"])) == 24

    found = json.loads((report / "mistakes.json").read_text())["mistakes"]
    probs = mistakes.softmax(out.astype(np.float64))
    assert len(found) == min(mistakes.SHOWN, int((preds != labels).sum()))
    assert all(m["predicted"] != m["true"] and m["text"] == rows[m["index"]]["text_a"] for m in found)
    conf = [m["confidence"] for m in found]
    assert conf == sorted(conf, reverse=True) and conf == pytest.approx([probs[m["index"]].max() for m in found])
    index = (report / "README.md").read_text()
    assert "![curves](curves.png)" in index and "| pos |" in index


def test_model_card_and_upload_carry_the_report(text_run: Path, tmp_path: Path):
    from sft_hub.export import assemble_upload

    card = (text_run / "README.md").read_text()
    assert "](report/curves.png)" in card and "](report/confusion_matrix_normalized.png)" in card and "| neg |" in card
    folder = assemble_upload(text_run, tmp_path / "upload")
    shown = [line.split("](")[1].rstrip(")") for line in (folder / "README.md").read_text().splitlines() if line.startswith("![")]
    assert shown and all(_valid_png(folder / path) for path in shown)
    assert not (folder / "report" / "mistakes.json").exists()  # examples of the user's data are not published


def test_tensorboard_events_read_back(text_run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(text_run / "tensorboard"))
    events.Reload()
    logged = [json.loads(line) for line in (text_run / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in logged if "loss" in r}
    scalars = {e.step: e.value for e in events.Scalars("train/loss")}
    assert scalars.keys() == losses.keys() and list(scalars.values()) == pytest.approx(list(losses.values()), rel=1e-6)
    assert "eval/accuracy" in events.Tags()["scalars"]


def test_image_run_report_has_a_thumbnail_grid(tmp_path: Path):
    from image_fixtures import make_folder

    folder = make_folder(tmp_path / "data")
    recipe = parse_recipe({
        "task": "image_classification", "model": {"name_or_path": "test_resnet", "image_size": 32},
        "data": {"folder": str(folder)}, "strategy": {"name": "full"},
        "training": {"output_dir": str(tmp_path / "run"), "max_steps": 2, "per_device_train_batch_size": 8, "logging_steps": 1,
                     "save_strategy": "no", "disable_tqdm": True}})
    train(recipe)
    report = tmp_path / "run" / "report"
    for name in (*FIGURES, "mistakes.png"):
        _valid_png(report / name)
    found = json.loads((report / "mistakes.json").read_text())["mistakes"]
    assert found and all(Path(m["file"]).is_file() and m["predicted"] != m["true"] for m in found)
    table = json.loads((report / "per_class.json").read_text())
    assert sum(c["support"] for c in table["classes"]) == 12


def test_load_report_filter_keeps_reports_beyond_the_head():
    from sft_hub.console import head_only_report

    head = ("BertForSequenceClassification LOAD REPORT from: x\nKey               | Status  | \n------------------+---------+-\n"
            "classifier.bias   | MISSING | \nclassifier.weight | MISSING | \ncls.predictions.bias | UNEXPECTED |\n\nNotes:\n- MISSING:\tnew")
    assert head_only_report(head)
    assert head_only_report(head.replace("classifier.bias  ", "timm_model.fc.bias"))
    assert not head_only_report(head.replace("classifier.bias  ", "bert.encoder.layer.0.attention.self.query.weight"))
    assert not head_only_report("LOAD REPORT without rows")


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    done = subprocess.run([sys.executable, "-m", "sft_hub", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def cli_run(tiny_bert, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A run trained by the real CLI, with max_length cut below the fixture sentences' length."""
    import yaml

    root = tmp_path_factory.mktemp("cli")
    raw = text_recipe(tiny_bert, write_sentiment_csv(root), root / "run", max_steps=2, learning_rate=1e-3)
    raw["data"]["max_length"] = 6  # the fixture sentences are 6 words + [CLS]/[SEP]: every row is truncated
    (root / "r.yaml").write_text(yaml.safe_dump(raw))
    return root / "run", _cli("train", str(root / "r.yaml"))


def test_console_is_quiet_and_ends_with_a_summary(cli_run, text_run: Path, capsys):
    from sft_hub.cli import main

    run_dir, trained = cli_run
    evaluated = _cli("eval", str(text_run))
    for done in (trained, evaluated):
        assert "LOAD REPORT" not in done.stderr + done.stdout and "MISSING" not in done.stderr + done.stdout
        assert "FutureWarning" not in done.stderr
    assert "done in" in trained.stdout and "trained lora:" in trained.stdout and f"run saved to {run_dir}" in trained.stdout
    assert "48 of 48 train rows are longer than max_length=6" in trained.stderr and "note: 2 warnings" in trained.stdout
    assert "{'loss'" not in trained.stdout + trained.stderr  # no printed log dicts
    assert "evaluated 24 inputs in" in evaluated.stderr and "validation: accuracy" in evaluated.stderr
    main(["predict", str(text_run), "so good", "so bad", "--json"])
    out, err = capsys.readouterr()
    assert "predicted 2 inputs in" in err and len(out.splitlines()) == 2  # stdout stays data only


def test_report_command_compares_runs(text_run: Path, cli_run, tmp_path: Path, capsys):
    from sft_hub.cli import main

    other = cli_run[0]
    read = lambda name: json.loads((text_run / "report" / name).read_text())  # noqa: E731
    table, worst = read("per_class.json"), read("mistakes.json")["mistakes"]
    main(["report", str(text_run)])  # reloads the run: the same report as the one written at the end of training
    assert read("per_class.json") == table  # (batches of another size: confidences equal to float rounding)
    again = read("mistakes.json")["mistakes"]
    assert [m["index"] for m in again] == [m["index"] for m in worst]
    assert [m["confidence"] for m in again] == pytest.approx([m["confidence"] for m in worst], abs=1e-6)
    main(["report", str(text_run), str(other), "--out", str(tmp_path / "cmp"), "--curves-only"])
    assert "### Per class" in (text_run / "report" / "README.md").read_text()  # curves only keep the full index
    text = (tmp_path / "cmp" / "README.md").read_text()
    first = text.split("\n## ")[0]  # the comparison table leads
    assert "| text | text_classification | lora |" in first and "| run | text_classification | lora |" in first
    _valid_png(tmp_path / "cmp" / "curves.png")
    with pytest.raises(SystemExit) as stop:
        main(["report", str(text_run), str(other)])
    assert stop.value.code == 2 and "--out" in capsys.readouterr().err


def test_curves_name_splits_and_keep_the_last_record_of_a_step():
    from sft_hub.report.curves import series

    records = [{"step": 1, "loss": 0.9, "learning_rate": 1e-3}, {"step": 2, "loss": 0.8},
               {"step": 2, "loss": 0.7},  # a resumed run logs step 2 again: the later record wins
               {"step": 2, "eval_accuracy": 0.5, "eval_runtime": 1.0, "eval_num_examples": 8},
               {"step": 2, "eval_validation_matched_accuracy": 0.6, "eval_validation_mismatched_accuracy": 0.4},
               {"step": 2, "train_runtime": 3.0, "total_flos": 1.0}]
    out = series(records, ["validation_matched", "validation_mismatched"])
    assert out["loss"] == {"train": {1: 0.9, 2: 0.7}} and out["learning rate"] == {"train": {1: 1e-3}}
    assert out["accuracy"] == {"validation_matched": {2: 0.6}, "validation_mismatched": {2: 0.4}}
    assert set(out) == {"loss", "learning rate", "accuracy"}


def test_regression_mistakes_are_the_largest_errors():
    found = mistakes.worst(np.array([[0.1], [2.0], [0.5], [3.0]]), np.array([0.0, 0.0, 0.5, 3.5]), None, k=3)
    assert [m["index"] for m in found] == [1, 3, 0] and [m["error"] for m in found] == pytest.approx([2.0, 0.5, 0.1])
