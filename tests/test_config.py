"""Recipe validation: every mistake is a one-line error naming the field, raised before any model loads."""

from __future__ import annotations

import pytest
import yaml
from conftest import text_recipe

from sft_hub.config import apply_overrides, load_recipe, parse_recipe
from sft_hub.engine import train
from sft_hub.errors import ConfigError, DataError


@pytest.fixture()
def raw(tmp_path, sentiment_files):
    # The model does not exist: any error below proves validation ran before model loading.
    return text_recipe(tmp_path / "no-such-model", sentiment_files, tmp_path / "run")


def write(tmp_path, raw) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


@pytest.mark.parametrize("override,message", [
    ("training.learnig_rate=1e-4", r"training.learnig_rate: unknown key; did you mean 'learning_rate'\?"),
    ("strategy.rr=4", r"strategy.rr: unknown key; did you mean 'r'\?"),
    ("data.text_column=[review]", r"data.text_column: unknown key; did you mean 'text_columns'\?"),
    ("modle.name_or_path=x", r"modle: unknown key; did you mean 'model'\?"),
    ("training.per_device_train_batch_size=eight", r"training.per_device_train_batch_size: expected int, got str 'eight'"),
    ("training.learning_rate=-0.1", r"training.learning_rate: must be >= 0, got -0.1"),
    ("data.max_length=[1]", r"data.max_length: expected int, got list"),
    ("data.data_files.train=/nope/train.csv", r"data.data_files.train: file /nope/train.csv not found"),
    ("task=text_classificaton", r"task: unknown task 'text_classificaton'; did you mean 'text_classification'\?"),
    ("strategy.name=lorra", r"strategy.name: unknown strategy 'lorra'"),
    ("training.push_to_hub=true", r"training.push_to_hub: not allowed in a recipe; use `sft-hub push RUN_DIR`"),
])
def test_config_errors_name_the_field(tmp_path, raw, override, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(write(tmp_path, raw), [override])


def test_malformed_yaml_names_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("task: text_classification\nmodel: {name_or_path: x\ndata: {}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: line \d+, column \d+: malformed YAML"):
        load_recipe(path)


def test_overrides_parse_like_yaml():
    raw = apply_overrides({"training": {}}, ["training.learning_rate=3e-5", "training.bf16=true", "strategy.target_modules=[query,value]", "data.glue=sst2"])
    assert raw["training"]["learning_rate"] == 3e-5 and raw["training"]["bf16"] is True
    assert raw["strategy"]["target_modules"] == ["query", "value"] and raw["data"]["glue"] == "sst2"


def test_override_that_is_not_yaml_names_it_and_says_how_to_quote():
    with pytest.raises(ConfigError) as err:
        apply_overrides({"data": {}}, ["data.file_glob=[0-4]_*.wav"])
    message = str(err.value)
    assert message.startswith("override data.file_glob: '[0-4]_*.wav' is not a YAML value (expected '<document start>'")
    assert message.endswith("""to pass it as a string, quote it inside the argument: 'data.file_glob="[0-4]_*.wav"'""")
    quoted = apply_overrides({"data": {}}, ['data.file_glob="[0-4]_*.wav"'])  # what the message suggests
    assert quoted["data"]["file_glob"] == "[0-4]_*.wav"


def test_yaml_float_without_dot_is_a_number(tmp_path, raw):
    raw["training"]["learning_rate"] = "5e-4"
    assert parse_recipe(raw).training["learning_rate"] == 5e-4


def test_missing_label_column_lists_columns(raw):
    raw["data"]["label_column"] = "stars"
    with pytest.raises(DataError, match=r"label column 'stars' not in data_files split 'train'; columns are review, sentiment"):
        train(parse_recipe(raw))


def test_eval_label_never_seen_in_training(tmp_path, raw):
    val = tmp_path / "validation.csv"
    val.write_text(val.read_text() + "the film was so so,meh\n")
    with pytest.raises(DataError, match=r"label 'meh' in split 'validation' \(row 16\) never seen in training; training labels are neg, pos"):
        train(parse_recipe(raw))


def test_empty_split_is_an_error(tmp_path, raw):
    (tmp_path / "validation.csv").write_text("review,sentiment\n")
    with pytest.raises(DataError, match=r"split 'validation' is empty"):
        train(parse_recipe(raw))
