"""The preflight's sample size: a small training file must not be judged on a handful of completions."""

from pathlib import Path

import pytest

from tests.worker.engine.conftest import tiny_config
from worker.engine.fixtures import Fixture
from worker.preflight import run_preflight, samples_per_item


@pytest.mark.parametrize(
    ("items", "max_items", "expected"), [(64, 64, 1), (100, 64, 1), (8, 64, 8), (5, 64, 13), (1, 3, 3)]
)
def test_samples_per_item_reach_max_items(items: int, max_items: int, expected: int) -> None:
    assert samples_per_item(items, max_items) == expected


def test_a_small_training_file_gets_max_items_sampled_completions(tiny: Fixture, tmp_path: Path) -> None:
    train = tmp_path / "train.jsonl"
    train.write_text("".join(tiny.train_file.read_text().splitlines(keepends=True)[:4]))
    config = tiny_config(tiny, tmp_path / "run", train_file=str(train))
    result = run_preflight(config, max_items=16)
    assert (result.items, result.completions) == (4, 4 + 16)
