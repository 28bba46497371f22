"""OpenAI's graders API through the official SDK: `client.fine_tuning.alpha.graders.validate` and `.run`
for every grader type, with the values OpenAI documents, and bad graders as 400s naming the field."""

from typing import Any

import openai
import pytest
from openai import OpenAI

from grading.sandbox import sandbox_unavailable_reason
from grading.similarity import similarity
from jobspec.graders import SIMILARITY_METRICS

from .conftest import Server

SAMPLE = "The capital of France is Paris."
ITEM = {"answer": "The capital of France is Paris.", "meta": {"city": "Paris"}, "n": 4}
METRICS = [metric for metric in SIMILARITY_METRICS if metric != "cosine"]
PYTHON = """
def grade(sample, item):
    words = sample["output_text"].split()
    return min(1.0, len(words) / (2 * item["n"]))
"""
needs_sandbox = pytest.mark.skipif(
    sandbox_unavailable_reason() is not None,
    reason=f"no Python grader sandbox: {sandbox_unavailable_reason()}",
)


@pytest.fixture
def client(server: Server, key: str) -> OpenAI:
    return OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0)


def similar(metric: str, reference: str = "{{item.answer}}") -> dict[str, Any]:
    return {
        "type": "text_similarity",
        "name": metric,
        "input": "{{sample.output_text}}",
        "reference": reference,
        "evaluation_metric": metric,
    }


def run(client: OpenAI, grader: dict[str, Any], sample: str = SAMPLE, item: dict[str, Any] = ITEM) -> Any:
    return client.fine_tuning.alpha.graders.run(grader=grader, model_sample=sample, item=item)  # type: ignore[arg-type]


@pytest.mark.parametrize("metric", METRICS)
def test_identical_text_scores_one_on_every_metric(client: OpenAI, metric: str) -> None:
    result = run(client, similar(metric))
    assert result.reward == 1.0
    assert result.metadata.type == "text_similarity" and result.metadata.name == metric
    assert not any(
        v for k, v in result.metadata.errors.model_dump().items() if not k.endswith(("details", "type"))
    )


def test_a_one_letter_typo_gets_partial_fuzzy_credit(client: OpenAI) -> None:
    typo = "The capital of France is Paros."
    result = run(client, similar("fuzzy_match"), sample=typo)
    assert 0.9 < result.reward < 1.0
    assert result.reward == pytest.approx(similarity("fuzzy_match", typo, ITEM["answer"]))


def test_string_check_with_nested_templates_and_output_json(client: OpenAI) -> None:
    grader = {
        "type": "string_check",
        "name": "city",
        "input": "{{sample.output_json.city}}",
        "reference": "{{item.meta.city}}",
        "operation": "eq",
    }
    assert run(client, grader, sample='{"city": "Paris"}').reward == 1.0
    assert run(client, grader, sample='{"city": "Lyon"}').reward == 0.0
    parse_error = run(client, grader, sample="Paris")
    assert parse_error.reward == 0.0 and parse_error.metadata.errors.sample_parse_error


def test_multi_formula_combines_sub_rewards_exactly(client: OpenAI) -> None:
    typo = "The capital of France is Paros."
    grader = {
        "type": "multi",
        "name": "combined",
        "graders": {
            "fuzzy": similar("fuzzy_match"),
            "exact": {
                "type": "string_check",
                "name": "exact",
                "input": "{{sample.output_text}}",
                "reference": "{{item.answer}}",
                "operation": "eq",
            },
        },
        "calculate_output": "0.25 * exact + 0.75 * fuzzy",
    }
    result = run(client, grader, sample=typo)
    fuzzy = similarity("fuzzy_match", typo, ITEM["answer"])
    assert result.sub_rewards == {"fuzzy": fuzzy, "exact": 0.0}
    assert result.reward == pytest.approx(0.75 * fuzzy, abs=1e-12)
    assert client.fine_tuning.alpha.graders.validate(grader=grader).grader is not None  # type: ignore[arg-type]


@needs_sandbox
def test_python_grader_gives_partial_credit_and_flags_errors(client: OpenAI) -> None:
    grader = {"type": "python", "name": "length", "source": PYTHON}
    assert run(client, grader).reward == pytest.approx(6 / 8)  # six words, n = 4
    broken = {
        "type": "python",
        "name": "broken",
        "source": "def grade(sample, item):\n    return item['x']\n",
    }
    result = run(client, broken)
    assert result.reward == 0.0 and result.metadata.errors.python_grader_runtime_error
    assert "KeyError" in (result.metadata.errors.python_grader_runtime_error_details or "")


def test_validate_echoes_every_type(client: OpenAI) -> None:
    graders: list[dict[str, Any]] = [
        {
            "type": "string_check",
            "name": "s",
            "input": "{{sample.output_text}}",
            "reference": "x",
            "operation": "ilike",
        },
        similar("rouge_l"),
        {"type": "python", "name": "p", "source": PYTHON},
        {
            "type": "score_model",
            "name": "judge",
            "model": "sppo-tiny",
            "range": [0, 10],
            "input": [{"role": "user", "content": "Rate: {{sample.output_text}}"}],
            "sampling_params": {"temperature": 0, "max_completions_tokens": 16},
        },
        {
            "type": "label_model",
            "name": "label",
            "model": "sppo-tiny",
            "labels": ["good", "bad"],
            "passing_labels": ["good"],
            "input": [{"role": "user", "content": "{{sample.output_text}}"}],
        },
        {
            "type": "regex",
            "name": "r",
            "input": "{{sample.output_text}}",
            "pattern": r"is (\w+)",
            "reference": "x",
        },
        {"type": "math", "name": "m", "input": "{{sample.output_text}}", "reference": "1/2"},
    ]
    for grader in graders:
        validated = client.fine_tuning.alpha.graders.validate(grader=grader)  # type: ignore[arg-type]
        assert validated.grader is not None and validated.grader.type == grader["type"]


@pytest.mark.parametrize(
    ("grader", "param"),
    [
        (
            {"type": "string_check", "name": "s", "input": "{{ item }}", "reference": "x", "operation": "eq"},
            "grader.input",
        ),
        ({"type": "python", "name": "p", "source": "def grade(:\n"}, "grader.source"),
        (
            {"type": "python", "name": "p", "source": "def score(sample, item):\n    return 1\n"},
            "grader.source",
        ),
        (
            {
                "type": "score_model",
                "name": "j",
                "model": "m",
                "input": [{"role": "user", "content": "x"}],
                "range": [1, 0],
            },
            "grader.range",
        ),
        (
            {
                "type": "label_model",
                "name": "l",
                "model": "m",
                "labels": ["a", "b"],
                "passing_labels": ["c"],
                "input": [{"role": "user", "content": "x"}],
            },
            "grader",
        ),
        (
            {"type": "multi", "name": "m", "graders": {"a": similar("bleu")}, "calculate_output": "a + b"},
            "grader.calculate_output",
        ),
        (
            {
                "type": "multi",
                "name": "m",
                "graders": {"a": similar("bleu")},
                "calculate_output": "__import__('os')",
            },
            "grader.calculate_output",
        ),
        ({**similar("bleu"), "evaluation_metric": "bertscore"}, "grader.evaluation_metric"),
        (
            {"type": "text_similarity", "name": "t", "input": "x", "reference": "y"},
            "grader.evaluation_metric",
        ),
    ],
)
def test_bad_graders_are_400s_naming_the_field(client: OpenAI, grader: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.fine_tuning.alpha.graders.validate(grader=grader)  # type: ignore[arg-type]
    assert caught.value.param is not None and caught.value.param.startswith(param), caught.value.param


def test_an_unknown_judge_model_is_a_400_at_run(client: OpenAI) -> None:
    grader = {
        "type": "score_model",
        "name": "j",
        "model": "gpt-judge",
        "input": [{"role": "user", "content": "x"}],
    }
    with pytest.raises(openai.BadRequestError) as caught:
        run(client, grader)
    assert caught.value.param == "grader.model"


def test_cosine_without_an_embeddings_model_is_a_400(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        run(client, similar("cosine"))
    assert caught.value.param == "grader.evaluation_metric"
