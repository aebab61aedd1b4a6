"""`sft-hub select` and `sft-hub compare` on tiny models: a planted best backbone wins, the leaderboard's
JSON schema, PNG and Markdown, compare's numbers equal the manifests, specs and budgets, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import NEGATIVE, POSITIVE, text_recipe, write_sentiment_csv, write_tiny_bert

from sft_hub import leaderboard
from sft_hub.cli import main
from sft_hub.compare import compare, folder_bytes, human_bytes, markdown
from sft_hub.selection import default_cheap
from sft_hub.selection_spec import Budget, TimeBudget, parse_budget, parse_strategies, strategy_mapping


def write_planted_bert(folder: Path, informative: bool) -> Path:
    """A tiny BERT whose [CLS] output is the mean of its token embeddings (uniform attention, identity layers).

    informative: positive words embed to +u, negative words to -u (the sentiment is linearly readable);
    blind: every word embeds to 0, so every sentence looks the same (chance at best).
    """
    write_tiny_bert(folder)
    from transformers import BertModel, BertTokenizerFast

    # conftest's tokenizer (built from `vocab_file=`) keeps only the 5 special tokens under transformers 5: every
    # word is [UNK]. The planted models need words, so their tokenizer is built from the vocab itself.
    vocab = (folder / "vocab.txt").read_text().split()
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    tok.save_pretrained(folder)
    model = BertModel.from_pretrained(folder)
    assert tok.convert_tokens_to_ids("good") != tok.unk_token_id
    hidden = model.config.hidden_size
    u = torch.tensor([1.0 if i % 2 == 0 else -1.0 for i in range(hidden)])  # zero mean: LayerNorm keeps it
    with torch.no_grad():
        emb = model.embeddings
        for table in (emb.word_embeddings, emb.position_embeddings, emb.token_type_embeddings):
            table.weight.zero_()
        if informative:
            for word, sign in [(w, 1.0) for w in POSITIVE] + [(w, -1.0) for w in NEGATIVE]:
                emb.word_embeddings.weight[tok.convert_tokens_to_ids(word)] = 3 * sign * u
        for layer in model.encoder.layer:
            att = layer.attention
            for lin in (att.self.query, att.self.key):
                lin.weight.zero_(), lin.bias.zero_()
            for lin in (att.self.value, att.output.dense):
                lin.weight.copy_(torch.eye(hidden)), lin.bias.zero_()
            layer.output.dense.weight.zero_(), layer.output.dense.bias.zero_()
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def selected(tmp_path_factory):
    root = tmp_path_factory.mktemp("select")
    good, blind = write_planted_bert(root / "good", True), write_planted_bert(root / "blind", False)
    files = write_sentiment_csv(root, n_train=200, n_val=40)
    recipe = root / "recipe.yaml"
    raw = text_recipe(good, files, root / "unused", {"name": "lora"}, learning_rate=0.05, max_steps=-1, num_train_epochs=2)
    recipe.write_text(yaml.safe_dump(raw))
    args = ["select", str(recipe), "--models", f"{blind},{good}", "--strategies", "head,lora:4", "--finetune-top", "1",
            "--budget", "25steps", "--cheap-budget", "2epochs", "--sample", "120", "--val-fraction", "0.25", "--output", str(root / "out")]
    main(args)
    return {"root": root, "good": str(good), "blind": str(blind), "args": args, "board": json.loads((root / "out" / "leaderboard.json").read_text())}


def test_planted_best_backbone_ranks_first(selected):
    board = selected["board"]
    assert board["cheap"]["ranking"] == [selected["good"], selected["blind"]]
    assert board["cheap"]["strategy"]["name"] == default_cheap()
    assert board["finetune"]["models"] == [selected["good"]] and board["best"]["model"] == selected["good"]
    assert board["best"]["score"] >= 0.9 and board["cheap_top_is_best_after_finetune"] is True
    cheap = {r["model"]: r for r in board["candidates"] if r["stage"] == "cheap"}
    assert cheap[selected["good"]]["score"] >= 0.9 and cheap[selected["blind"]]["score"] <= 0.7
    fine = [r for r in board["candidates"] if r["stage"] == "finetune"]
    assert [r["rank"] for r in fine] == [1, 2] and {r["label"] for r in fine} == {"head", "lora:r=4"}
    assert fine[0]["score"] >= fine[1]["score"]
    for row in fine:  # the budget: 25 optimizer steps, whatever the recipe's epochs say
        assert row["train_steps"] == 25 and Path(row["run_dir"]).parent.name == "finetune"


def test_ranked_on_a_split_carved_from_train_and_recipe_split_reported(selected):
    board = selected["board"]
    assert board["ranked_on"]["split"] == "holdout" and board["ranked_on"]["carved_from_train_by"] == "select"
    assert board["ranked_on"]["rows"] == 50 and board["reported_splits"] == ["validation"]
    for row in board["candidates"]:
        manifest = json.loads((Path(row["run_dir"]) / "manifest.json").read_text())
        assert manifest["splits"]["holdout"] == 50 and manifest["splits"]["validation"] == 40
        assert manifest["splits"]["train"] == (120 if row["stage"] == "cheap" else 150)
        assert row["score"] == manifest["metrics"]["holdout"]["eval_holdout_accuracy"]
        assert row["reported"]["validation"] == manifest["metrics"]["validation"]["eval_validation_accuracy"]


def test_leaderboard_files_and_schema(selected):
    out = selected["root"] / "out"
    leaderboard.check(selected["board"])
    assert (out / "leaderboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / "leaderboard.png").stat().st_size > 10_000
    md = (out / "leaderboard.md").read_text()
    assert "| rank | stage | model | strategy | accuracy (holdout) | accuracy (validation) |" in md
    assert "Ranked on `holdout`" in md and "never used to choose: `validation`" in md
    broken = json.loads(json.dumps(selected["board"]))
    del broken["candidates"][0]["score"]
    with pytest.raises(ValueError, match=r"candidates\[0\]\.score: missing"):
        leaderboard.check(broken)
    broken = json.loads(json.dumps(selected["board"]))
    broken["candidates"][0]["rank"], broken["candidates"][1]["rank"] = 2, 1
    with pytest.raises(ValueError, match="ranks"):
        leaderboard.check(broken)


def test_second_select_reuses_finished_candidates(selected, capsys):
    main(selected["args"])
    board = json.loads((selected["root"] / "out" / "leaderboard.json").read_text())
    assert all(r["reused"] for r in board["candidates"])
    assert [r["score"] for r in board["candidates"]] == [r["score"] for r in selected["board"]["candidates"]]
    assert "| 1 | finetune |" in capsys.readouterr().out


def test_compare_numbers_equal_the_manifests(selected, capsys):
    dirs = [r["run_dir"] for r in selected["board"]["candidates"]]
    rows = compare(dirs)
    for row, d in zip(rows, dirs):
        m = json.loads((Path(d) / "manifest.json").read_text())
        assert row["trainable_params"] == m["parameters"]["trainable"] and row["total_params"] == m["parameters"]["total"]
        assert row["train_seconds"] == m["train"]["train_runtime"]
        assert row["train_samples_per_second"] == m["train"]["train_samples_per_second"]
        assert row["peak_rss_bytes"] == m["resources"]["peak_rss_bytes"] > 0 and m["resources"]["rss_scope"] == "run"
        assert row["saved_bytes"] == folder_bytes(Path(d) / m["saved_as"]) > 0
        assert row["metric"]["value"] == m["metrics"]["holdout"]["eval_holdout_accuracy"]
    main(["compare", *dirs, "--json"])
    assert json.loads(capsys.readouterr().out) == rows
    table = markdown(rows)
    assert table.count("\n") == len(rows) + 1 and human_bytes(rows[0]["saved_bytes"]) in table


@pytest.mark.parametrize("args,message", [
    (["--strategies", "head,nonsense"], "error: --strategies: 'nonsense' not registered in this sft-hub (registered: "),
    (["--strategies", "lora:r=-1"], "error: --strategies: 'lora:r=-1': strategy.r: must be a positive number"),
    (["--strategies", "head,,lora"], "error: --strategies: give a comma-separated list without empty entries"),
    (["--models", "/nowhere/model"], "error: --models: '/nowhere/model': "),
    (["--models", "a,a"], "error: --models: a listed twice"),
    (["--budget", "soon"], "error: --budget: expected steps, epochs or a time"),
    (["--cheap", "probe"], "error: --cheap: 'probe' not registered"),
])
def test_bad_flags_are_one_line_errors_before_training(tiny_bert, tmp_path, capsys, args, message):
    files = write_sentiment_csv(tmp_path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(text_recipe(tiny_bert, files, tmp_path / "unused")))
    flags = {"--models": str(tiny_bert), "--strategies": "head", "--output": str(tmp_path / "out")}
    flags.update(dict(zip(args[::2], args[1::2])))
    with pytest.raises(SystemExit) as exc:
        main(["select", str(recipe), *[x for kv in flags.items() for x in kv]])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and err.startswith(message) and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_unregistered_strategies_are_named_together():
    with pytest.raises(Exception, match=r"'partial_x', 'probe_y' not registered"):
        parse_strategies("partial_x,lora,probe_y")


def test_strategy_specs_and_budgets():
    assert strategy_mapping("lora:8") == {"name": "lora", "r": 8}
    assert strategy_mapping("lora:r=16:alpha=32") == strategy_mapping("lora.r=16.alpha=32") == {"name": "lora", "r": 16, "alpha": 32}
    assert strategy_mapping("lora.lora_dropout=0.05") == {"name": "lora", "lora_dropout": 0.05}
    [(spec, strategy)] = parse_strategies("lora:r=16:alpha=32")
    assert spec == "lora:r=16:alpha=32" and strategy.to_dict() == {"name": "lora", "r": 16, "lora_alpha": 32}
    assert parse_budget("200steps") == Budget("steps", 200) and parse_budget("5min") == Budget("seconds", 300)
    assert parse_budget("90s") == Budget("seconds", 90) and parse_budget("1epoch") == Budget("epochs", 1)
    assert Budget("steps", 200).training_overrides() == {"max_steps": 200}
    assert isinstance(parse_budget("2min").callbacks()[0], TimeBudget)


def test_time_budget_stops_training(tiny_bert, sentiment_files, tmp_path):
    from sft_hub.config import parse_recipe
    from sft_hub.engine import train

    budget = TimeBudget(0.0)  # spent after the first step
    out = train(parse_recipe(text_recipe(tiny_bert, sentiment_files, tmp_path / "run", max_steps=50)), callbacks=[budget])
    assert budget.stopped_at == 1 and out["trainer"].state.global_step == 1 and out["manifest"] is not None


def test_glue_carves_a_holdout_beside_its_dev_split(tmp_path):
    from glue_fixtures import write_glue

    from sft_hub.schema import from_dict
    from sft_hub.tasks import text

    folder = write_glue(tmp_path / "SST-2", "sst2", n_train=40, n_dev=6)
    data = text.load_data(from_dict(text.DataConfig, {"glue": "sst2", "data_dir": str(folder), "validation_fraction": 0.25,
                                                      "eval_splits": ["holdout", "validation"]}, "data"), seed=3)
    assert data.eval_splits == ["holdout", "validation"] and {k: len(v) for k, v in data.splits.items()} == {"train": 30, "holdout": 10, "validation": 6}
    default = text.load_data(from_dict(text.DataConfig, {"glue": "sst2", "data_dir": str(folder)}, "data"), seed=3)
    assert default.eval_splits == ["validation"] and len(default.splits["train"]) == 40  # unchanged without the fraction


def test_learning_rates_per_strategy():
    from sft_hub.selection_spec import parse_learning_rates

    assert parse_learning_rates("full=5e-5,lora:r=4=1e-3") == {"full": 5e-5, "lora:r=4": 1e-3}
    with pytest.raises(Exception, match="--lr: expected STRATEGY=LR"):
        parse_learning_rates("full=fast")


@pytest.mark.slow
@pytest.mark.multiprocess
def test_select_under_two_process_ddp(tmp_path):
    """Every rank trains every candidate (a time budget decided by rank 0's clock); rank 0 alone prints and writes."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    good, blind = write_planted_bert(tmp_path / "good", True), write_planted_bert(tmp_path / "blind", False)
    files = write_sentiment_csv(tmp_path, n_train=120, n_val=20)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(text_recipe(good, files, tmp_path / "unused", {"name": "head"}, learning_rate=0.05)))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "sft_hub", "select", str(recipe),
                           "--models", f"{blind},{good}", "--strategies", "head", "--cheap", "head", "--finetune-top", "1",
                           "--budget", "3s", "--cheap-budget", "6steps", "--output", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "1", "MASTER_PORT": "29519"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("| 1 | finetune |") == 1 and proc.stderr.count("leaderboard written to") == 1
    board = leaderboard.read(out / "leaderboard.json")
    assert board["cheap"]["ranking"][0] == str(good)
    for row in board["candidates"]:
        assert json.loads((Path(row["run_dir"]) / "manifest.json").read_text())["world_size"] == 2


def test_ties_are_broken_by_the_ranking_loss():
    from sft_hub.selection import sort_rows

    rows = [{"model": "a", "score": 0.58, "loss": 0.69, "metric_name": "accuracy"},
            {"model": "b", "score": 0.58, "loss": 0.61, "metric_name": "accuracy"},
            {"model": "c", "score": None}, {"model": "d", "score": 0.9, "loss": 0.9, "metric_name": "accuracy"}]
    assert [r["model"] for r in sort_rows(rows)] == ["d", "b", "a", "c"]


def test_another_selects_candidates_are_never_mixed_in(selected, capsys):
    args = [a if a != "25steps" else "26steps" for a in selected["args"]]  # same output, other budget
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exc.value.code == 2 and "training.output_dir:" in err and "holds a" in err and "--overwrite" in err
