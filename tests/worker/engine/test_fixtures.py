"""The shipped fixtures: found without building, checksum-verified, at their recorded base accuracy."""

import json
import random
import shutil
from pathlib import Path

import pytest

from worker.engine.fixture_tasks import TASKS, long_problem, running_sum_problem
from worker.engine.fixtures import (
    FIXTURE_GRADER,
    FIXTURE_NAMES,
    SHIPPED_DIR,
    FixtureError,
    default_fixture_dir,
    ensure_fixture,
    load_fixture,
)


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_shipped_fixture_loads_without_building(name: str) -> None:
    fixture = ensure_fixture(name)
    assert fixture.model_dir == SHIPPED_DIR / name / "model" == default_fixture_dir(name) / "model"
    manifest = json.loads((SHIPPED_DIR / name / "fixture.json").read_text())
    assert 0.25 <= fixture.base_accuracy <= 0.35, "the base model sits inside the chosen window"
    assert manifest["validation_items"] == sum(1 for _ in fixture.validation_file.open()) >= 400
    assert json.loads((fixture.model_dir / "sppo_grader.json").read_text()) == FIXTURE_GRADER
    assert (fixture.model_dir / "model.safetensors").stat().st_size < 8_000_000


def test_both_fixtures_ship() -> None:
    assert FIXTURE_NAMES == ("sppo-tiny", "sppo-tiny-long")


def test_a_changed_model_file_fails_its_checksum(tmp_path: Path) -> None:
    copy = tmp_path / "sppo-tiny"
    shutil.copytree(default_fixture_dir(), copy)
    config = copy / "model" / "config.json"
    config.write_text(config.read_text().replace('"num_hidden_layers": 4', '"num_hidden_layers": 3'))
    with pytest.raises(FixtureError, match="does not match its checksum"):
        load_fixture(copy)
    with pytest.raises(FixtureError, match="unknown fixture 'sppo-huge'"):
        ensure_fixture("sppo-huge")


def test_running_sum_problem_writes_every_addition() -> None:
    prompt, completion, answer = running_sum_problem(random.Random(3), 4)
    rng = random.Random(3)
    a, b, c, d = (rng.randint(10, 99) for _ in range(4))
    assert prompt == f"{a}+{b}+{c}+{d}="
    s, t, u = a + b, a + b + c, a + b + c + d
    assert completion == f"{a}+{b}={s};{s}+{c}={t};{t}+{d}={u}#### {u}"
    assert answer == str(u)


def test_long_task_needs_at_least_128_response_tokens() -> None:
    rng = random.Random(0)
    lengths = [len(long_problem(rng)[1]) + 1 for _ in range(2000)]  # one token per character, plus EOS
    assert min(lengths) >= 128
    assert max(lengths) <= TASKS["sppo-tiny-long"].max_response_tokens
