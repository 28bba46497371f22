"""Grader spec models: OpenAI's documented examples validate; refusals name the field at fault."""

import copy
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from jobspec.graders import (
    GRADER_TYPES,
    SIMILARITY_METRICS,
    Grader,
    LabelModelGrader,
    MultiGrader,
    PythonGrader,
    ScoreModelGrader,
    StringCheckGrader,
    TextSimilarityGrader,
)
from jobspec.walk import grader_item_paths, judge_models, template_params

GRADER: TypeAdapter[Any] = TypeAdapter(Grader)

# OpenAI's examples (platform.openai.com/docs/guides/graders), in the fine-tuning grader shapes: the guide's
# eval-only `pass_threshold` and its label_model `max_tokens` (the SDK says max_completions_tokens) left out
STRING_CHECK = {
    "type": "string_check",
    "name": "exact",
    "input": "{{ sample.output_text }}",
    "reference": "{{ item.reference_answer }}",
    "operation": "eq",
}
PYTHON_SOURCE = """from rapidfuzz import fuzz, utils

def grade(sample, item) -> float:
    output_text = sample["output_text"]
    reference_answer = item["reference_answer"]
    return fuzz.WRatio(output_text, reference_answer, processor=utils.default_process) / 100.0
"""
PYTHON = {"type": "python", "name": "fuzzy", "source": PYTHON_SOURCE, "image_tag": "2025-05-08"}
SCORE_MODEL = {
    "type": "score_model",
    "name": "my_score_model",
    "input": [
        {
            "role": "system",
            "content": "You are an expert grader. If the reference and model answer are exact matches, "
            "output a score of 1. If they are somewhat similar in meaning, output a score in 0.5. Otherwise, "
            "give a score of 0.",
        },
        {
            "role": "user",
            "content": "Reference: {{ item.reference_answer }}. Model answer: {{ sample.output_text }}",
        },
    ],
    "model": "o4-mini-2025-04-16",
    "range": [0, 1],
    "sampling_params": {"max_completions_tokens": 32768, "top_p": 1, "reasoning_effort": "medium"},
}
LABEL_MODEL = {
    "type": "label_model",
    "name": "my_label_model",
    "input": [
        {"role": "system", "content": "You are an expert grader."},
        {
            "role": "user",
            "content": "Classify this: {{ sample.output_text }} as either good or bad, "
            "where closer to 1 is good.",
        },
    ],
    "passing_labels": ["good"],
    "labels": ["good", "bad"],
    "model": "o3-mini-2024-01-31",
    "sampling_params": {
        "max_completions_tokens": 32768,
        "top_p": 1,
        "seed": 42,
        "reasoning_effort": "medium",
    },
}
MULTI = {
    "type": "multi",
    "name": "name_and_email",
    "graders": {
        "name": {
            "name": "name_grader",
            "type": "text_similarity",
            "input": "{{sample.output_json.name}}",
            "reference": "{{item.name}}",
            "evaluation_metric": "fuzzy_match",
        },
        "email": {
            "name": "email_grader",
            "type": "string_check",
            "input": "{{sample.output_json.email}}",
            "reference": "{{item.email}}",
            "operation": "eq",
        },
    },
    "calculate_output": "(name + email) / 2",
}
REGEX = {
    "type": "regex",
    "name": "final",
    "input": "{{sample.output_text}}",
    "pattern": r"answer:\s*(\p{N}+)",
    "reference": "{{item.answer}}",
}
MATH = {"type": "math", "name": "math", "input": "{{sample.output_text}}", "reference": "{{item.solution}}"}


def similarity_grader(metric: str) -> dict[str, Any]:
    return {
        "type": "text_similarity",
        "name": "similar",
        "input": "{{sample.output_text}}",
        "reference": "{{item.reference_answer}}",
        "evaluation_metric": metric,
    }


def refusal(spec: dict[str, Any]) -> dict[str, Any]:
    """The first error pydantic gives for the spec (it must be refused)."""
    with pytest.raises(ValidationError) as caught:
        GRADER.validate_python(spec)
    return dict(caught.value.errors()[0])


def changed(spec: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {**copy.deepcopy(spec), **fields}


@pytest.mark.parametrize(
    ("spec", "model"),
    [
        (STRING_CHECK, StringCheckGrader),
        (PYTHON, PythonGrader),
        (SCORE_MODEL, ScoreModelGrader),
        (LABEL_MODEL, LabelModelGrader),
        (MULTI, MultiGrader),
    ],
)
def test_openai_examples_validate(spec: dict[str, Any], model: type) -> None:
    grader = GRADER.validate_python(spec)
    assert isinstance(grader, model)
    assert grader.model_dump(mode="json", exclude_none=True) == spec


@pytest.mark.parametrize("metric", SIMILARITY_METRICS)
def test_text_similarity_validates_for_every_metric(metric: str) -> None:
    grader = GRADER.validate_python(similarity_grader(metric))
    assert isinstance(grader, TextSimilarityGrader) and grader.evaluation_metric == metric


def test_extension_types_validate() -> None:
    regex = GRADER.validate_python(REGEX)
    assert regex.operation == "eq"  # the default
    assert GRADER.validate_python(MATH).type == "math"
    assert set(GRADER_TYPES) == {
        "string_check",
        "text_similarity",
        "python",
        "score_model",
        "label_model",
        "multi",
        "regex",
        "math",
    }


def test_score_model_details() -> None:
    grader = GRADER.validate_python(SCORE_MODEL)
    assert grader.bounds == (0.0, 1.0)
    assert grader.sampling_params.reasoning_effort == "medium"
    assert GRADER.validate_python(changed(SCORE_MODEL, range=[1, 10])).bounds == (1.0, 10.0)
    assert GRADER.validate_python(changed(SCORE_MODEL, range=None)).bounds == (0.0, 1.0)
    # content as parts, and the optional message type
    parts = [
        {"type": "input_text", "text": "Grade {{sample.output_text}}"},
        {"type": "output_text", "text": "ok"},
    ]
    spec = changed(SCORE_MODEL, input=[{"role": "user", "content": parts, "type": "message"}])
    assert GRADER.validate_python(spec).input[0].templates() == ["Grade {{sample.output_text}}", "ok"]


def test_multi_accepts_a_single_grader_object() -> None:
    # the SDK types `graders` as one grader: it becomes the map of its own name to it
    spec = {"type": "multi", "name": "m", "graders": STRING_CHECK, "calculate_output": "exact * 2 - 1"}
    grader = GRADER.validate_python(spec)
    assert list(grader.graders) == ["exact"]
    assert isinstance(grader.graders["exact"], StringCheckGrader)
    assert grader.formula.evaluate({"exact": 1.0}) == 1.0


def test_python_source_is_never_run() -> None:
    source = "raise SystemExit('ran')\n\ndef grade(sample, item):\n    return 1.0\n"
    assert GRADER.validate_python(changed(PYTHON, source=source)).source == source


@pytest.mark.parametrize(
    ("spec", "loc", "error_type"),
    [
        (changed(STRING_CHECK, bogus=1), ("string_check", "bogus"), "extra_forbidden"),
        (changed(STRING_CHECK, operation="neq"), ("string_check", "operation"), "literal_error"),
        (changed(STRING_CHECK, input="{{item}}"), ("string_check", "input"), "value_error"),
        (changed(STRING_CHECK, reference="{% if x %}"), ("string_check", "reference"), "value_error"),
        (changed(STRING_CHECK, name=""), ("string_check", "name"), "string_too_short"),
        (
            {k: v for k, v in STRING_CHECK.items() if k != "operation"},
            ("string_check", "operation"),
            "missing",
        ),
        (changed(STRING_CHECK, type="exact_match"), (), "union_tag_invalid"),
        (similarity_grader("rouge_6"), ("text_similarity", "evaluation_metric"), "literal_error"),
        (
            changed(PYTHON, source="def grade(sample, item)\n    return 1"),
            ("python", "source"),
            "value_error",
        ),
        (
            changed(PYTHON, source="def score(sample, item):\n    return 1"),
            ("python", "source"),
            "value_error",
        ),
        (changed(PYTHON, source="def grade(sample):\n    return 1"), ("python", "source"), "value_error"),
        (changed(PYTHON, source="async def grade(s, i):\n    return 1"), ("python", "source"), "value_error"),
        (changed(SCORE_MODEL, range=[1, 0]), ("score_model", "range"), "value_error"),
        (changed(SCORE_MODEL, range=[0.5, 0.5]), ("score_model", "range"), "value_error"),
        (changed(SCORE_MODEL, range=[0, 1, 2]), ("score_model", "range"), "too_long"),
        (changed(SCORE_MODEL, input=[]), ("score_model", "input"), "too_short"),
        (
            changed(SCORE_MODEL, sampling_params={"temperature": 3}),
            ("score_model", "sampling_params", "temperature"),
            "less_than_equal",
        ),
        (
            changed(SCORE_MODEL, sampling_params={"max_tokens": 10}),
            ("score_model", "sampling_params", "max_tokens"),
            "extra_forbidden",
        ),
        (changed(LABEL_MODEL, passing_labels=["great"]), ("label_model", "passing_labels"), "value_error"),
        (changed(LABEL_MODEL, labels=["good", "good"]), ("label_model", "labels"), "value_error"),
        (changed(LABEL_MODEL, labels=["good"]), ("label_model", "labels"), "too_short"),
        (changed(MULTI, calculate_output="(name + phone) / 2"), ("multi", "calculate_output"), "value_error"),
        (changed(MULTI, calculate_output="name.__class__"), ("multi", "calculate_output"), "value_error"),
        (changed(MULTI, graders={}), ("multi", "graders"), "too_short"),
        (
            changed(MULTI, graders={"bad name": STRING_CHECK}),
            ("multi", "graders", "bad name", "[key]"),
            "string_pattern_mismatch",
        ),
        (changed(REGEX, pattern=r"answer: \d+"), ("regex", "pattern"), "value_error"),
        (changed(REGEX, pattern=r"(a)(b)"), ("regex", "pattern"), "value_error"),
        (changed(REGEX, pattern=r"(unclosed"), ("regex", "pattern"), "value_error"),
    ],
)
def test_refusals_name_the_field(spec: dict[str, Any], loc: tuple[str, ...], error_type: str) -> None:
    error = refusal(spec)
    assert error["loc"] == loc
    assert error["type"] == error_type


def test_refusal_messages() -> None:
    assert "syntax error at line 1" in refusal(changed(PYTHON, source="def grade(sample, item)\n"))["msg"]
    assert "grade(sample, item)" in refusal(changed(PYTHON, source="x = 1\n"))["msg"]
    assert "low < high" in refusal(changed(SCORE_MODEL, range=[1, 0]))["msg"]
    assert "['great']" in refusal(changed(LABEL_MODEL, passing_labels=["good", "great"]))["msg"]
    assert "'phone' is no sub-grader" in refusal(changed(MULTI, calculate_output="name + phone"))["msg"]


def test_nested_multi_is_refused() -> None:
    inner = changed(MULTI, name="inner")
    error = refusal(changed(MULTI, graders={"inner": inner, "email": MULTI["graders"]["email"]}))
    assert error["loc"] == ("multi", "graders", "inner")
    assert error["type"] == "union_tag_invalid"


def test_an_invalid_sub_grader_is_reported_alone() -> None:
    # the formula is not checked against graders that failed: one error, at the sub-grader's field
    spec = changed(MULTI, graders={"name": changed(STRING_CHECK, operation="bad")})
    with pytest.raises(ValidationError) as caught:
        GRADER.validate_python(spec)
    assert [error["loc"] for error in caught.value.errors()] == [
        ("multi", "graders", "name", "string_check", "operation")
    ]


JUDGED_MULTI = {
    "type": "multi",
    "name": "judged",
    "graders": {
        "judge": {
            "type": "score_model",
            "name": "judge",
            "model": "o4-mini-2025-04-16",
            "input": [
                {"role": "system", "content": "You grade answers."},
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "Gold: {{item.meta.gold}}"},
                        {"type": "input_text", "text": "Answer: {{sample.output_text}} ({{item.question}})"},
                    ],
                },
            ],
            "range": [0, 10],
        },
        "exact": {
            "type": "string_check",
            "name": "exact",
            "input": "{{sample.output_json.answer}}",
            "reference": "{{ item.meta.gold }}",
            "operation": "eq",
        },
        "code": {"type": "python", "name": "code", "source": "def grade(sample, item):\n    return 1.0\n"},
        "label": {
            "type": "label_model",
            "name": "label",
            "model": "gpt-4.1-mini-2025-04-14",
            "input": [{"role": "user", "content": "{{sample.output_text}}"}],
            "labels": ["yes", "no"],
            "passing_labels": ["yes"],
        },
    },
    "calculate_output": "0.5 * judge + 0.3 * exact + 0.1 * code + 0.1 * label",
}


def test_template_params_of_a_multi_grader() -> None:
    grader = GRADER.validate_python(JUDGED_MULTI)
    assert template_params(grader, "grader") == {
        "grader.graders.judge.input[0].content[0]": "You grade answers.",
        "grader.graders.judge.input[1].content[0]": "Gold: {{item.meta.gold}}",
        "grader.graders.judge.input[1].content[1]": "Answer: {{sample.output_text}} ({{item.question}})",
        "grader.graders.exact.input": "{{sample.output_json.answer}}",
        "grader.graders.exact.reference": "{{ item.meta.gold }}",
        "grader.graders.label.input[0].content[0]": "{{sample.output_text}}",
    }


def test_grader_item_paths_of_a_multi_grader() -> None:
    grader = GRADER.validate_python(JUDGED_MULTI)
    assert grader_item_paths(grader, "grader") == {
        "grader.graders.judge.input[0].content[0]": set(),
        "grader.graders.judge.input[1].content[0]": {("meta", "gold")},
        "grader.graders.judge.input[1].content[1]": {("question",)},
        "grader.graders.exact.input": set(),
        "grader.graders.exact.reference": {("meta", "gold")},
        "grader.graders.label.input[0].content[0]": set(),
    }
    single = GRADER.validate_python(STRING_CHECK)
    assert grader_item_paths(single, "grader") == {
        "grader.input": set(),
        "grader.reference": {("reference_answer",)},
    }
    assert grader_item_paths(GRADER.validate_python(PYTHON), "grader") == {}  # Python graders: none known


def test_judge_models() -> None:
    assert judge_models(GRADER.validate_python(JUDGED_MULTI)) == [
        "o4-mini-2025-04-16",
        "gpt-4.1-mini-2025-04-14",
    ]
    assert judge_models(GRADER.validate_python(SCORE_MODEL)) == ["o4-mini-2025-04-16"]
    assert judge_models(GRADER.validate_python(LABEL_MODEL)) == ["o3-mini-2024-01-31"]
    for spec in (STRING_CHECK, PYTHON, MULTI, REGEX, MATH, similarity_grader("bleu")):
        assert judge_models(GRADER.validate_python(spec)) == []


def test_specs_are_frozen() -> None:
    grader = GRADER.validate_python(STRING_CHECK)
    with pytest.raises(ValidationError):
        grader.operation = "ne"
