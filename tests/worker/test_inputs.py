"""Data the model cannot take fails at once with invalid_training_file naming the line."""

import json
from pathlib import Path

import pytest

from worker.engine.errors import DataFileError
from worker.engine.fixtures import Fixture
from worker.engine.policy import load_tokenizer
from worker.inputs import check_file, model_context


def _file(tmp_path: Path, *contents: str) -> Path:
    path = tmp_path / "train.jsonl"
    lines = [json.dumps({"messages": [{"role": "user", "content": c}], "answer": "2"}) for c in contents]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_lone_surrogate_is_refused_with_its_line(tiny: Fixture, tmp_path: Path) -> None:
    path = _file(tmp_path, "1+1=", "1+\ud800=")  # json.dumps writes the escape "\ud800", valid JSON
    assert "\\ud800" in path.read_text()
    with pytest.raises(DataFileError) as caught:
        check_file(path, "training_file", load_tokenizer(tiny.model_dir), model_context(tiny.model_dir))
    assert (caught.value.code, caught.value.param) == ("invalid_training_file", "training_file")
    assert caught.value.message.startswith("Line 2 of the training file holds a lone UTF-16 surrogate")


def test_a_prompt_longer_than_the_context_is_refused_with_its_length(tiny: Fixture, tmp_path: Path) -> None:
    context = model_context(tiny.model_dir)
    assert context == 64
    path = _file(tmp_path, "1+1=", "2+2=", "9" * 100_000)
    with pytest.raises(DataFileError) as caught:
        check_file(path, "validation_file", load_tokenizer(tiny.model_dir), context)
    assert caught.value.param == "validation_file"
    assert "line 3 of the validation file" in caught.value.message
    assert "the model's context is 64 tokens" in caught.value.message


def test_the_fixture_data_passes(tiny: Fixture) -> None:
    tokenizer = load_tokenizer(tiny.model_dir)
    check_file(tiny.train_file, "training_file", tokenizer, model_context(tiny.model_dir))


def test_a_long_prompt_in_content_parts_is_measured_joined(tiny: Fixture, tmp_path: Path) -> None:
    parts = [{"type": "text", "text": "9" * 50}, {"type": "text", "text": "9" * 50}]
    path = tmp_path / "parts.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": parts}], "answer": "1"}) + "\n")
    tokenizer = load_tokenizer(tiny.model_dir)
    with pytest.raises(DataFileError) as caught:
        check_file(path, "training_file", tokenizer, model_context(tiny.model_dir))
    # BOS and one token per digit: the 100 digits joined (the part list's repr would be far longer)
    assert "The prompt on line 1 of the training file is 101 tokens long" in caught.value.message
