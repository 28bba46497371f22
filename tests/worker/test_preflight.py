"""The preflight's sample size: a small training file must not be judged on a handful of completions."""

import os
from pathlib import Path

import pytest

from grading.sandbox import sandbox_unavailable_reason
from tests.worker.engine.conftest import tiny_config
from worker.engine.errors import EngineError
from worker.engine.fixtures import Fixture
from worker.preflight import (
    MIN_SAMPLED,
    PreflightResult,
    check,
    run_preflight,
    samples_per_item,
    scored_model,
)


@pytest.mark.parametrize(("items", "expected"), [(64, 1), (100, 1), (8, 8), (5, 13), (1, 64)])
def test_samples_per_item_reach_min_sampled(items: int, expected: int) -> None:
    assert samples_per_item(items) == expected


def test_a_small_training_file_gets_min_sampled_completions(tiny: Fixture, tmp_path: Path) -> None:
    train = tmp_path / "train.jsonl"
    train.write_text("".join(tiny.train_file.read_text().splitlines(keepends=True)[:4]))
    config = tiny_config(tiny, tmp_path / "run", train_file=str(train))
    result = run_preflight(config, max_items=16)
    assert (result.items, result.completions) == (4, 4 + MIN_SAMPLED)


def test_a_python_grader_giving_everyone_the_same_partial_credit_fails_the_preflight(
    tiny: Fixture, tmp_path: Path
) -> None:
    if sandbox_unavailable_reason() is not None and not os.environ.get("CI"):
        pytest.skip(f"no Python grader sandbox here: {sandbox_unavailable_reason()}")
    grader = {"type": "python", "name": "flat", "source": "def grade(sample, item):\n    return 0.5\n"}
    config = tiny_config(tiny, tmp_path / "run", grader=grader)
    result = run_preflight(config, max_items=8)
    assert (result.constant, result.error_rate) == (0.5, 0.0)
    with pytest.raises(EngineError) as refused:
        check(result, grader, override=False, model=scored_model(None))
    assert refused.value.code == "grader_constant_reward"
    assert "gives the same partial credit whatever the answer" in refused.value.message


def test_partial_credit_that_varies_passes_and_errors_are_counted(tiny: Fixture, tmp_path: Path) -> None:
    # no digit → KeyError on item["nope"] (a flagged 0); some digit → partial credit by length
    source = "def grade(sample, item):\n    if not any(c.isdigit() for c in sample['output_text']):\n" \
        "        return item['nope']\n    return min(1.0, len(sample['output_text']) / 40)\n"  # fmt: skip
    grader = {"type": "python", "name": "length", "source": source}
    if sandbox_unavailable_reason() is not None and not os.environ.get("CI"):
        pytest.skip(f"no Python grader sandbox here: {sandbox_unavailable_reason()}")
    result = run_preflight(tiny_config(tiny, tmp_path / "run", grader=grader), max_items=8)
    assert result.constant is None and result.reward_spread > 0
    assert check(result, grader, override=False, model=scored_model(None)) is None
    assert 0.0 <= result.error_rate < 1.0


def test_the_preflight_of_a_warm_start_names_the_model_it_scored() -> None:
    """A warm start scores the fine-tuned model it continues: its messages name it, not "the base model"."""
    grader = {"type": "string_check", "name": "exact"}
    parent = "ft:sppo-tiny:t::ftjob-1"
    constant = PreflightResult(items=8, completions=64, reward_mean=0.0, example="7")
    with pytest.raises(EngineError) as refused:
        check(constant, grader, override=False, model=scored_model(parent))
    assert f"to all 64 completions of the model '{parent}' this job continues on 8 training items" in (
        refused.value.message
    )
    assert "base model" not in refused.value.message
    warning = check(constant, grader, override=True, model=scored_model(parent))
    assert warning is not None and "base model" not in warning and parent in warning
    failing = PreflightResult(
        items=8, completions=64, reward_mean=0.0, example="7", error_rate=1.0, error="x"
    )
    with pytest.raises(EngineError) as failed:
        check(failing, grader, override=True, model=scored_model(parent))
    assert f"completions of the model '{parent}' this job continues" in failed.value.message
    with pytest.raises(EngineError) as base:
        check(constant, grader, override=False, model=scored_model(None))
    assert "to all 64 completions of the base model on 8 training items" in base.value.message
