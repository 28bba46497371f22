"""Job creation refuses a response budget, or a longest prompt plus the budget, that the model's context
cannot hold: a 400 naming max_response_tokens with the numbers, the file and the line (live server)."""

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from core.registry import FIXTURES_ROOT
from tests.app.conftest import REGISTRY_MODEL, assert_error, method

JOBS = "/v1/fine_tuning/jobs"
PARAM = "method.reinforcement.hyperparameters.max_response_tokens"


def sums(*terms: int, digits: int = 2) -> str:
    """A JSONL file of running-sum prompts with these numbers of terms (each `digits` long)."""
    lines = []
    for count in terms:
        prompt = "+".join(str(10 ** (digits - 1) + i) for i in range(count)) + "="
        lines.append(json.dumps({"messages": [{"role": "user", "content": prompt}], "answer": "1"}) + "\n")
    return "".join(lines)


@pytest.fixture
def post(api: httpx.Client) -> Callable[..., httpx.Response]:
    def _post(model: str, training_file: str, **body: Any) -> httpx.Response:
        return api.post(
            JOBS, json={"model": model, "training_file": training_file, "method": method(), **body}
        )

    return _post


def created(api: httpx.Client, response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    api.post(f"{JOBS}/{response.json()['id']}/cancel")  # within the tenant's concurrent-jobs quota


def test_a_budget_that_fills_the_context_is_refused(
    api: httpx.Client, upload: Callable[..., dict[str, Any]], post: Callable[..., httpx.Response]
) -> None:
    file_id = upload(sums(3, 3))["id"]
    body = {"method": method(max_response_tokens=64)}
    error = assert_error(post("sppo-tiny", file_id, **body), 400, PARAM)
    assert error["code"] == "context_length_exceeded"
    assert error["message"] == (
        "Model 'sppo-tiny': max_response_tokens 64 does not fit the model's context of 64 positions, which "
        "holds the prompt and the response together; set max_response_tokens below 64."
    )
    # the resolved budget counts, whatever sets it: here reasoning_effort's 1024 tokens
    effort = assert_error(post("sppo-tiny", file_id, method=method(reasoning_effort="low")), 400, PARAM)
    assert "max_response_tokens 1024 (from reasoning_effort 'low') does not fit" in effort["message"]


def test_the_longest_prompt_and_the_budget_must_fit(
    api: httpx.Client, upload: Callable[..., dict[str, Any]], post: Callable[..., httpx.Response]
) -> None:
    """sppo-tiny-long: 256 positions; an 18-term prompt is 55 tokens (BOS and a token per character)."""
    file_id = upload(sums(12, 18, 16))["id"]
    error = assert_error(post("sppo-tiny-long", file_id, method=method(max_response_tokens=208)), 400, PARAM)
    assert error["code"] == "context_length_exceeded"
    assert error["message"] == (
        f"Model 'sppo-tiny-long': The longest prompt, on line 2 of the training file '{file_id}', is 55 "
        "tokens with the model's chat template; with max_response_tokens 208 that makes 263, more than the "
        "model's context of 256 positions. max_response_tokens 201 would fit, or prompts of at most 48 "
        "tokens."
    )
    created(api, post("sppo-tiny-long", file_id, method=method(max_response_tokens=201)))
    created(api, post("sppo-tiny-long", file_id))  # the model's default, 192


def test_the_models_default_budget_and_the_validation_file_count_too(
    api: httpx.Client, upload: Callable[..., dict[str, Any]], post: Callable[..., httpx.Response]
) -> None:
    training = upload(sums(12, 16))["id"]
    three_digits = upload(sums(14, 18, digits=3))["id"]  # 1 + 18 * 4 = 73 tokens
    error = assert_error(post("sppo-tiny-long", training, validation_file=three_digits), 400, PARAM)
    assert error["message"].startswith(
        f"Model 'sppo-tiny-long': The longest prompt, on line 2 of the validation file '{three_digits}', is "
        "73 tokens with the model's chat template; with max_response_tokens 192 (the model's default) that "
        "makes 265,"
    )
    assert "max_response_tokens 183 would fit" in error["message"]


def test_a_prompt_that_fills_the_context_names_the_file(
    upload: Callable[..., dict[str, Any]], post: Callable[..., httpx.Response]
) -> None:
    file_id = upload(sums(3, 22))["id"]  # 1 + 22 * 3 = 67 tokens: more than sppo-tiny's 64 positions
    error = assert_error(post("sppo-tiny", file_id), 400, "training_file")
    assert error["code"] == "prompt_too_long"
    assert f"The prompt on line 2 of the training file '{file_id}' is 67 tokens" in error["message"]


def test_the_fixtures_own_data_fits_their_defaults(
    api: httpx.Client, upload: Callable[..., dict[str, Any]], post: Callable[..., httpx.Response]
) -> None:
    for name in ("sppo-tiny", "sppo-tiny-long"):
        head = "".join((FIXTURES_ROOT / name / "train.jsonl").read_text().splitlines(keepends=True)[:1000])
        validation = (FIXTURES_ROOT / name / "validation.jsonl").read_text()
        training_file, validation_file = upload(head)["id"], upload(validation)["id"]
        created(api, post(name, training_file, validation_file=validation_file))


def test_a_model_whose_prompts_the_api_cannot_count_checks_the_budget_only(
    api: httpx.Client, upload: Callable[..., dict[str, Any]], post: Callable[..., httpx.Response]
) -> None:
    """The registry model's tokenizer.json is not a tokenizer: prompts are left to the worker's check."""
    file_id = upload(sums(30))["id"]  # 91 characters, more than its 64 positions in a character tokenizer
    created(api, post(REGISTRY_MODEL, file_id))
    error = assert_error(post(REGISTRY_MODEL, file_id, method=method(max_response_tokens=64)), 400, PARAM)
    assert "context of 64 positions" in error["message"]
