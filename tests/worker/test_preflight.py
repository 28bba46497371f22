"""The preflight's sample size: a small training file must not be judged on a handful of completions."""

from pathlib import Path

import pytest

from tests.worker.engine.conftest import tiny_config
from worker.engine.fixtures import Fixture
from worker.preflight import MIN_SAMPLED, run_preflight, samples_per_item


@pytest.mark.parametrize(("items", "expected"), [(64, 1), (100, 1), (8, 8), (5, 13), (1, 64)])
def test_samples_per_item_reach_min_sampled(items: int, expected: int) -> None:
    assert samples_per_item(items) == expected


def test_a_small_training_file_gets_min_sampled_completions(tiny: Fixture, tmp_path: Path) -> None:
    train = tmp_path / "train.jsonl"
    train.write_text("".join(tiny.train_file.read_text().splitlines(keepends=True)[:4]))
    config = tiny_config(tiny, tmp_path / "run", train_file=str(train))
    result = run_preflight(config, max_items=16)
    assert (result.items, result.completions) == (4, 4 + MIN_SAMPLED)
