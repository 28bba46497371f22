"""Rule graders through the engine's build_grader: every operation, template rules, errors, threads."""

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from grading.result import GradeResult
from worker.engine.errors import EngineError
from worker.engine.graders import BatchGrader, GraderSpecError, build_grader

OUTPUT = "{{sample.output_text}}"
ITEM = {"answer": "42", "number": 7, "messages": [{"role": "user", "content": "6*7="}]}


def one(grader: BatchGrader, item: dict[str, Any], completion: str) -> float:
    return grade(grader, item, completion).reward


def grade(grader: BatchGrader, item: dict[str, Any], completion: str) -> GradeResult:
    return grader.grade([(item, completion)])[0]


def string_check(operation: str, reference: str = "{{item.answer}}") -> dict[str, Any]:
    return {
        "type": "string_check",
        "name": "s",
        "input": OUTPUT,
        "reference": reference,
        "operation": operation,
    }


@pytest.mark.parametrize(
    ("operation", "completion", "expected"),
    [
        ("eq", "42", 1.0),
        ("eq", "42 ", 0.0),  # exact comparison, as in OpenAI's string_check
        ("ne", "41", 1.0),
        ("ne", "42", 0.0),
        ("like", "the answer is 42.", 1.0),  # like: the input contains the reference
        ("like", "the answer is 4 2", 0.0),
        ("ilike", "The Answer", 0.0),
    ],
)
def test_string_check_operations(operation: str, completion: str, expected: float) -> None:
    assert one(build_grader(string_check(operation)), ITEM, completion) == expected


def test_like_is_case_sensitive_and_ilike_is_not() -> None:
    item = {"answer": "Paris"}
    assert one(build_grader(string_check("like")), item, "it is PARIS") == 0.0
    assert one(build_grader(string_check("ilike")), item, "it is PARIS") == 1.0


def test_non_string_item_fields_render_as_json() -> None:
    assert one(build_grader(string_check("eq", "{{ item.number }}")), ITEM, "7") == 1.0


def test_substitution_is_not_recursive() -> None:
    # a completion that itself looks like a template is compared as plain text
    grader = build_grader(string_check("eq", "{{item.answer}}"))
    assert one(grader, ITEM, "{{item.answer}}") == 0.0


@pytest.mark.parametrize("variable", ["item", "sample.text", "__import__('os')", "1+1", "item.a b"])
def test_unknown_template_variable_names_the_param(variable: str) -> None:
    with pytest.raises(GraderSpecError, match="unknown template variable") as caught:
        build_grader(string_check("eq", "{{" + variable + "}}"))
    assert (caught.value.code, caught.value.param) == ("invalid_grader", "grader.reference")
    assert isinstance(caught.value, EngineError)


@pytest.mark.parametrize(
    ("spec", "param"),
    [
        ({"type": "pythonic", "input": OUTPUT}, "grader.type"),
        ({"type": "python", "name": "p", "source": "x = 1"}, "grader.source"),
        ({**string_check("eq"), "operation": "contains"}, "grader.operation"),
        ({**string_check("eq"), "reference": 3}, "grader.reference"),
        ({**string_check("eq"), "extra": 1}, "grader.extra"),
        ({**string_check("eq"), "name": 5}, "grader.name"),
        ({"type": "math", "name": "m", "input": OUTPUT}, "grader.reference"),
        (
            {"type": "regex", "name": "r", "input": OUTPUT, "reference": "x", "pattern": "(unclosed"},
            "grader.pattern",
        ),
        (
            {"type": "regex", "name": "r", "input": OUTPUT, "reference": "x", "pattern": r"\d+"},
            "grader.pattern",
        ),
        (
            {"type": "regex", "name": "r", "input": OUTPUT, "reference": "x", "pattern": "(a)(b)"},
            "grader.pattern",
        ),
        (
            {
                "type": "regex",
                "name": "r",
                "input": OUTPUT,
                "reference": "x",
                "pattern": "(a)",
                "operation": "like",
            },
            "grader.operation",
        ),
    ],
)
def test_invalid_specs_name_the_param(spec: dict[str, Any], param: str) -> None:
    with pytest.raises(GraderSpecError) as caught:
        build_grader(spec)
    assert caught.value.param == param


def test_missing_item_field_gives_zero_with_the_invalid_variable_flag() -> None:
    result = grade(build_grader(string_check("eq", "{{item.solution}}")), ITEM, "42")
    assert result.reward == 0.0
    assert result.errors == {"invalid_variable_error": "{{item.solution}} has no value for this item"}


def test_nested_item_fields_and_output_json() -> None:
    item = {"meta": {"gold": "42"}}
    spec = {**string_check("eq", "{{item.meta.gold}}"), "input": "{{sample.output_json.answer}}"}
    assert one(build_grader(spec), item, '{"answer": "42"}') == 1.0
    result = grade(build_grader(spec), item, "not json")
    assert (result.reward, list(result.errors)) == (0.0, ["sample_parse_error"])


def math_grader(reference: str = "{{item.answer}}") -> dict[str, Any]:
    return {"type": "math", "name": "m", "input": OUTPUT, "reference": reference}


@pytest.mark.parametrize(
    ("reference", "completion", "expected"),
    [
        ("1/2", "0.5", 1.0),
        ("1/2", "The answer is $\\frac{1}{2}$", 1.0),
        ("\\frac{1}{2}", "\\boxed{0.5}", 1.0),
        ("0.5", "1/2", 1.0),
        ("2x+1", "so it is $1 + 2x$", 1.0),  # bare reference read as LaTeX, not as its first number
        ("2x+1", "2", 0.0),
        ("1/2", "0.49", 0.0),
        ("42", "no number here", 0.0),
        ("42", "\\boxed{", 0.0),  # unparsable output → 0, never an exception
        ("", "42", 0.0),
    ],
)
def test_math_equivalence(reference: str, completion: str, expected: float) -> None:
    assert one(build_grader(math_grader()), {"answer": reference}, completion) == expected


def test_math_grader_works_off_the_main_thread() -> None:
    # math-verify's default SIGALRM timeout raises ValueError outside the main thread
    grader = build_grader(math_grader())
    cases = [("1/2", "0.5", 1.0), ("3", "\\boxed{3}", 1.0), ("3", "4", 0.0)] * 4
    with ThreadPoolExecutor(max_workers=3) as pool:
        scores = list(pool.map(lambda case: one(grader, {"answer": case[0]}, case[1]), cases))
    assert scores == [expected for _, _, expected in cases]


def regex_grader(pattern: str = r"#\s*(-?\d+)", operation: str | None = None) -> dict[str, Any]:
    spec = {"type": "regex", "name": "r", "input": OUTPUT, "pattern": pattern, "reference": "{{item.answer}}"}
    return spec if operation is None else {**spec, "operation": operation}


def test_regex_uses_the_last_match_stripped() -> None:
    grader = build_grader(regex_grader(r"#([^#]*)"))
    assert one(grader, ITEM, "12+30=42#41 # 42 ") == 1.0  # last match " 42 " → "42"
    assert one(grader, ITEM, "#42 then #41") == 0.0


def test_regex_no_match_and_ne() -> None:
    assert one(build_grader(regex_grader()), ITEM, "no answer") == 0.0
    assert one(build_grader(regex_grader(operation="ne")), ITEM, "#41") == 1.0
    assert one(build_grader(regex_grader(operation="ne")), ITEM, "#42") == 0.0


def test_regex_optional_group_that_did_not_participate() -> None:
    grader = build_grader(regex_grader(r"(x)?y"))
    assert one(grader, {"answer": ""}, "y") == 1.0  # group is None → ""


def test_catastrophic_regex_is_bounded() -> None:
    grader = build_grader(regex_grader(r"((?:a|aa)+)$"))
    assert one(grader, ITEM, "a" * 60 + "!") == 0.0  # times out after REGEX_TIMEOUT_S instead of hanging
