"""The preflight's sample size: a small training file must not be judged on a handful of completions."""

import os
from pathlib import Path

import pytest

from grading.sandbox import sandbox_unavailable_reason
from tests.worker.engine.conftest import tiny_config
from worker.engine.errors import EngineError
from worker.engine.fixtures import Fixture
from worker.preflight import MIN_SAMPLED, check, run_preflight, samples_per_item


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
        check(result, grader, override=False)
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
    assert check(result, grader, override=False) is None
    assert 0.0 <= result.error_rate < 1.0
