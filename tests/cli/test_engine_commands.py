"""`sppo fixture build`, `sppo train` and `sppo eval` end to end on the tiny fixture (one step)."""

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from cli.main import app
from worker.engine.fixtures import FIXTURE_GRADER, Fixture, default_fixture_dir

runner = CliRunner()


def test_fixture_train_and_eval(tmp_path: Path, tiny: Fixture) -> None:
    # without --rebuild the command reports the shipped copy
    fixture_dir = default_fixture_dir()
    built = runner.invoke(app, ["fixture", "build"])
    assert built.exit_code == 0, built.output
    assert "base greedy accuracy" in built.output
    config = {
        "model": str(fixture_dir / "model"),
        "train_file": str(fixture_dir / "train.jsonl"),
        "validation_file": str(fixture_dir / "validation.jsonl"),
        "grader": FIXTURE_GRADER,
        "output_dir": str(tmp_path / "run"),
        "batch_size": 4,
        "minibatch_size": 4,
        "max_steps": 1,
        "eval_max_items": 4,
        "eval_samples": 1,
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(config))
    trained = runner.invoke(app, ["train", str(tmp_path / "job.yaml")])
    assert trained.exit_code == 0, trained.output
    assert "completed at step 1/1" in trained.output
    assert "model: step 1 (eval: {'eval/pass@1': " in trained.output
    assert (tmp_path / "run" / "metrics.jsonl").exists()
    scored = runner.invoke(
        app,
        [
            "eval", "--model", str(fixture_dir / "model"),
            "--adapter", str(tmp_path / "run" / "final" / "adapter"),
            "--data", str(fixture_dir / "validation.jsonl"), "--grader", json.dumps(FIXTURE_GRADER),
            "--samples", "1", "--max-items", "4", "--max-response-tokens", "32",
        ],
    )  # fmt: skip
    assert scored.exit_code == 0, scored.output
    assert "eval/pass@1" in scored.output


def test_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_text("model: x\ntrain_file: y\n")
    result = runner.invoke(app, ["train", str(tmp_path / "job.yaml")])
    assert result.exit_code == 1
    assert "grader" in result.output
