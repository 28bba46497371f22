"""The context rule the API and the engine share: the reader, the budget's resolution, the boundaries."""

import json
from pathlib import Path
from typing import Any

import pytest

from jobspec.context import (
    Overflow,
    context_length,
    prompt_overflow,
    read_context_length,
    resolve_max_response_tokens,
    response_overflow,
)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"max_position_embeddings": 4096, "n_positions": 1024}, 4096),  # the first key wins
        ({"n_positions": 1024, "n_ctx": 1024}, 1024),  # GPT-2
        ({"max_sequence_length": 2048}, 2048),
        ({"seq_length": 8192}, 8192),  # ChatGLM
        ({"max_seq_len": 2048}, 2048),  # MPT
        ({"text_config": {"max_position_embeddings": 131072}, "vision_config": {}}, 131072),  # multimodal
        ({"max_position_embeddings": 0, "n_positions": 512}, 512),  # not a length: the next key
        ({"max_position_embeddings": True}, None),
        ({"max_position_embeddings": "4096"}, None),
        ({"hidden_size": 128}, None),
        ([4096], None),
    ],
)
def test_context_length_from_a_config(config: Any, expected: int | None) -> None:
    assert context_length(config) == expected


def test_read_context_length_of_a_folder(tmp_path: Path) -> None:
    assert read_context_length(tmp_path) is None  # no config.json
    (tmp_path / "config.json").write_text("{not json")
    assert read_context_length(tmp_path) is None
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 64}))
    assert read_context_length(tmp_path) == 64


def test_fixture_contexts() -> None:
    root = Path(__file__).resolve().parents[2] / "worker" / "engine" / "fixture_models"
    assert read_context_length(root / "sppo-tiny" / "model") == 64
    assert read_context_length(root / "sppo-tiny-long" / "model") == 256


@pytest.mark.parametrize(
    ("hyperparameters", "defaults", "expected"),
    [
        ({"max_response_tokens": 100, "reasoning_effort": "high"}, {"max_response_tokens": 32}, (100, "")),
        ({"reasoning_effort": "low"}, {"max_response_tokens": 32}, (1024, " (from reasoning_effort 'low')")),
        ({}, {"max_response_tokens": 32}, (32, " (the model's default)")),
        ({}, {"max_response_tokens": "32"}, (8192, " (the engine's default)")),
        ({}, {}, (8192, " (the engine's default)")),
        # the worker reads a model's per-algorithm section (sppo-tiny's own test: "grpo" below)
        (
            {},
            {"max_response_tokens": 32, "algorithms": {"sppo": {"max_response_tokens": 48}}},
            (48, " (the model's default)"),
        ),
    ],
)
def test_the_budget_resolves_in_the_workers_order(
    hyperparameters: dict[str, Any], defaults: dict[str, Any], expected: tuple[int, str]
) -> None:
    assert resolve_max_response_tokens(hyperparameters, defaults) == expected


def test_the_budget_reads_the_models_section_for_the_algorithm_as_the_worker_does() -> None:
    defaults = {"max_response_tokens": 32, "algorithms": {"grpo": {"max_response_tokens": 48}}}
    assert resolve_max_response_tokens({}, defaults, "grpo") == (48, " (the model's default)")
    assert resolve_max_response_tokens({}, defaults, "sppo") == (32, " (the model's default)")
    default_effort = resolve_max_response_tokens({"reasoning_effort": "default"}, defaults)
    assert default_effort == (32, " (the model's default)")


def test_a_budget_must_leave_a_position_for_the_prompt() -> None:
    assert response_overflow(63, 64) is None
    overflow = response_overflow(64, 64, source=" (the model's default)")
    assert overflow == Overflow(
        "max_response_tokens",
        "max_response_tokens 64 (the model's default) does not fit the model's context of 64 positions, "
        "which holds the prompt and the response together; set max_response_tokens below 64.",
    )


def test_a_prompt_and_its_budget_must_fit() -> None:
    where = "on line 7 of the training file"
    assert prompt_overflow(prompt_tokens=55, max_response_tokens=201, context=256, where=where) is None
    overflow = prompt_overflow(prompt_tokens=55, max_response_tokens=202, context=256, where=where)
    assert overflow == Overflow(
        "max_response_tokens",
        "The longest prompt, on line 7 of the training file, is 55 tokens with the model's chat template; "
        "with max_response_tokens 202 that makes 257, more than the model's context of 256 positions. "
        "max_response_tokens 201 would fit, or prompts of at most 54 tokens.",
    )


def test_a_prompt_that_fills_the_context_is_the_prompts_fault() -> None:
    overflow = prompt_overflow(prompt_tokens=64, max_response_tokens=1, context=64, where="on line 3 of x")
    assert overflow is not None and overflow.change == "prompt"
    assert overflow.message.startswith(
        "The prompt on line 3 of x is 64 tokens with the model's chat template"
    )
    shorter = prompt_overflow(prompt_tokens=63, max_response_tokens=1, context=64, where="on line 3 of x")
    assert shorter is None
