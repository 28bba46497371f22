"""Data the model cannot take fails the job at once, before the preflight, naming the line."""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from core.models import File, Job
from core.settings import Settings
from worker.engine.config import RunConfig
from worker.engine.errors import ConfigError, DataFileError
from worker.engine.fixtures import FIXTURE_GRADER, Fixture
from worker.inputs import check_file, check_prompts
from worker.runconfig import build_run_config
from worker.training import run_job

PARAM = "method.reinforcement.hyperparameters.max_response_tokens"


def _file(tmp_path: Path, *contents: str) -> Path:
    path = tmp_path / "train.jsonl"
    lines = [json.dumps({"messages": [{"role": "user", "content": c}], "answer": "2"}) for c in contents]
    path.write_text("\n".join(lines) + "\n")
    return path


def _config(tiny: Fixture, tmp_path: Path, train: Path, **values: object) -> RunConfig:
    paths = {"model": str(tiny.model_dir), "train_file": str(train), "output_dir": str(tmp_path / "run")}
    return RunConfig.from_dict({**paths, "grader": FIXTURE_GRADER, **values})


def test_a_lone_surrogate_is_refused_with_its_line(tmp_path: Path) -> None:
    path = _file(tmp_path, "1+1=", "1+\ud800=")  # json.dumps writes the escape "\ud800", valid JSON
    assert "\\ud800" in path.read_text()
    with pytest.raises(DataFileError) as caught:
        check_file(path, "training_file")
    assert (caught.value.code, caught.value.param) == ("invalid_training_file", "training_file")
    assert caught.value.message.startswith("Line 2 of the training file holds a lone UTF-16 surrogate")


def test_a_prompt_longer_than_the_context_is_refused_with_its_length(tiny: Fixture, tmp_path: Path) -> None:
    path = _file(tmp_path, "1+1=", "2+2=", "9" * 100_000)
    with pytest.raises(DataFileError) as caught:
        check_prompts(_config(tiny, tmp_path, path))
    assert caught.value.param == "training_file"
    assert caught.value.message.startswith("The prompt on line 3 of the training file is 100001 tokens")
    assert "the model's context of 64 positions" in caught.value.message


def test_a_budget_the_prompts_leave_no_room_for_is_refused(tiny: Fixture, tmp_path: Path) -> None:
    path = _file(tmp_path, "1+1=", "12+34=")  # line 2: BOS + 6 characters
    check_prompts(_config(tiny, tmp_path, path, max_response_tokens=57))
    with pytest.raises(ConfigError) as caught:
        check_prompts(_config(tiny, tmp_path, path, max_response_tokens=58))
    assert (caught.value.code, caught.value.param) == ("invalid_config", "max_response_tokens")
    assert "on line 2 of the training file, is 7 tokens" in caught.value.message


def test_the_fixture_data_passes(tiny: Fixture, tmp_path: Path) -> None:
    check_prompts(_config(tiny, tmp_path, tiny.train_file, validation_file=str(tiny.validation_file)))


def stored_job(settings: Settings, session: Session, make_job: Callable[..., str], tiny: Fixture,
               hyperparameters: dict[str, Any]) -> str:  # fmt: skip
    """A queued job on 16 fixture items stored as its training file 'file-x'."""
    method = {"type": "reinforcement", "reinforcement": {"algorithm": "sppo", "grader": FIXTURE_GRADER}}
    job_id = make_job(method=method, hyperparameters=hyperparameters)
    key = "files/file-x.jsonl"
    (settings.data_dir / "files").mkdir()
    (settings.data_dir / key).write_bytes(b"".join(tiny.train_file.read_bytes().splitlines(True)[:16]))
    session.add(File(id="file-x", tenant_id=session.get_one(Job, job_id).tenant_id, filename="train.jsonl",
                     purpose="fine-tune", bytes=0, sha256="", storage_uri=key, line_count=16))  # fmt: skip
    session.commit()
    return job_id


@pytest.mark.parametrize(
    ("hyperparameters", "tokens"),
    [
        ({"max_response_tokens": 16, "reasoning_effort": "low"}, 16),
        ({"reasoning_effort": "low"}, 1024),
        ({}, 32),
    ],
)
def test_the_budget_resolves_as_the_api_checks_it(
    settings: Settings,
    session: Session,
    make_job: Callable[..., str],
    tiny: Fixture,
    hyperparameters: dict[str, Any],
    tokens: int,
) -> None:
    """The job's value, its reasoning_effort, the model's default (sppo-tiny: 32): jobspec.context's order."""
    job = session.get_one(Job, stored_job(settings, session, make_job, tiny, hyperparameters))
    config, resolved = build_run_config(session, settings=settings, job=job)
    assert config.max_response_tokens == resolved["max_response_tokens"] == tokens


def test_the_job_fails_naming_the_hyperparameter(
    settings: Settings, session: Session, make_job: Callable[..., str], tiny: Fixture
) -> None:
    """The worker's run of a job the API let through (a file changed in storage, or a model whose template
    the API cannot render): `failed` before the preflight, with the API's param name."""
    job_id = stored_job(settings, session, make_job, tiny, {"max_response_tokens": 60})
    assert run_job(job_id, settings=settings) == "failed"
    session.expire_all()
    job = session.get_one(Job, job_id)
    assert (job.error_code, job.error_param) == ("invalid_config", PARAM)
    assert job.error_message is not None
    assert job.error_message.startswith("The longest prompt, on line 1 of the training file, is 10 tokens")
    assert "max_response_tokens 54 would fit" in job.error_message


def test_a_long_prompt_in_content_parts_is_measured_joined(tiny: Fixture, tmp_path: Path) -> None:
    parts = [{"type": "text", "text": "9" * 50}, {"type": "text", "text": "9" * 50}]
    path = tmp_path / "parts.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": parts}], "answer": "1"}) + "\n")
    with pytest.raises(DataFileError) as caught:
        check_prompts(_config(tiny, tmp_path, path))
    # BOS and one token per digit: the 100 digits joined (the part list's repr would be far longer)
    assert "The prompt on line 1 of the training file is 101 tokens" in caught.value.message
