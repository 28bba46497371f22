"""The engine's context check with the model's real tokenizer: before the trainer loads a model, and in
`sppo train` (an error naming max_response_tokens, exit code 1)."""

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cli.main import app
from worker.engine.config import RunConfig
from worker.engine.context import check_run_context
from worker.engine.data import encode_prompts, load_items
from worker.engine.errors import ConfigError, DataFileError
from worker.engine.fixtures import FIXTURE_GRADER, Fixture, ensure_fixture
from worker.engine.policy import load_tokenizer
from worker.engine.run import run_training


def write(path: Path, *prompts: str) -> str:
    """A JSONL file of these prompts; "" leaves a blank line (it still counts as a line)."""
    items = [{"messages": [{"role": "user", "content": p}], "answer": "1"} for p in prompts]
    lines = [json.dumps(item) if prompt else "" for item, prompt in zip(items, prompts, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def config(fixture: Fixture, tmp_path: Path, **values: object) -> RunConfig:
    paths = {"model": str(fixture.model_dir), "train_file": str(fixture.train_file)}
    return RunConfig.from_dict(
        {**paths, "grader": FIXTURE_GRADER, "output_dir": str(tmp_path / "run"), **values}
    )


@pytest.mark.parametrize("name", ["sppo-tiny", "sppo-tiny-long"])
def test_the_fixtures_fit_with_their_own_defaults(name: str, tmp_path: Path) -> None:
    fixture = ensure_fixture(name)
    run = config(fixture, tmp_path, validation_file=str(fixture.validation_file), eval_max_items=None)
    assert run.max_response_tokens == fixture.max_response_tokens  # 32 and 192, from sppo_defaults.json
    check_run_context(run)


def test_the_longest_prompt_plus_the_budget_must_fit(tiny: Fixture, tmp_path: Path) -> None:
    train = write(
        tmp_path / "train.jsonl", "1+1=", "", "12+34+56+78=", "1+2="
    )  # line 3: BOS + 12 = 13 tokens
    assert [len(p) for p in encode_prompts(load_tokenizer(tiny.model_dir), load_items(train))] == [5, 13, 5]
    check_run_context(config(tiny, tmp_path, train_file=train, max_response_tokens=51))
    with pytest.raises(ConfigError) as caught:
        check_run_context(config(tiny, tmp_path, train_file=train, max_response_tokens=52))
    assert caught.value.param == "max_response_tokens"
    assert caught.value.message == (
        "The longest prompt, on line 3 of the training file, is 13 tokens with the model's chat template; "
        "with max_response_tokens 52 that makes 65, more than the model's context of 64 positions. "
        "max_response_tokens 51 would fit, or prompts of at most 12 tokens."
    )


def test_a_budget_that_fills_the_context(tiny: Fixture, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        check_run_context(config(tiny, tmp_path, max_response_tokens=64))
    assert caught.value.param == "max_response_tokens"
    assert caught.value.message.startswith("max_response_tokens 64 does not fit the model's context of 64")


def test_the_validation_items_the_run_evaluates_on_count(tiny: Fixture, tmp_path: Path) -> None:
    validation = write(tmp_path / "validation.jsonl", "1+1=", "12+34+56+78+90=")  # line 2: 16 tokens
    run = config(tiny, tmp_path, validation_file=validation, max_response_tokens=49)
    with pytest.raises(ConfigError, match="on line 2 of the validation file, is 16 tokens"):
        check_run_context(run)
    check_run_context(
        config(tiny, tmp_path, validation_file=validation, max_response_tokens=49, eval_max_items=1)
    )


def test_a_prompt_that_fills_the_context_is_a_data_error(tiny: Fixture, tmp_path: Path) -> None:
    train = write(tmp_path / "train.jsonl", "1+1=", "9" * 70)
    with pytest.raises(DataFileError) as caught:
        check_run_context(config(tiny, tmp_path, train_file=train))
    assert caught.value.param == "training_file"
    assert caught.value.message.startswith("The prompt on line 2 of the training file is 71 tokens")


def test_training_refuses_a_run_that_does_not_fit(tiny: Fixture, tmp_path: Path) -> None:
    train = write(tmp_path / "train.jsonl", "123456789")
    with pytest.raises(ConfigError, match="max_response_tokens 60 that makes 70"):
        run_training(config(tiny, tmp_path, train_file=train, max_response_tokens=60))


def test_sppo_train_prints_the_error_and_exits_1(tiny: Fixture, tmp_path: Path) -> None:
    values = {"model": str(tiny.model_dir), "train_file": str(tiny.train_file), "grader": FIXTURE_GRADER,
              "output_dir": str(tmp_path / "run"), "max_response_tokens": 60}  # fmt: skip
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(values))
    result = CliRunner().invoke(app, ["train", str(tmp_path / "job.yaml")])
    assert result.exit_code == 1, result.output
    output = " ".join(result.output.split())  # rich wraps long lines
    assert "error: [invalid_config] The longest prompt, on line" in output
    assert "max_response_tokens 54 would fit" in output and "(param: max_response_tokens)" in output
