"""Building and running batch graders: a grader never raises out of `grade`, a multi grader's failures."""

from typing import Any

import pytest

from grading.build import GraderConfigError, build_grader, parse_grader
from grading.result import GradeResult

OUTPUT = "{{sample.output_text}}"


def exact(name: str, reference: str = "{{item.answer}}") -> dict[str, Any]:
    return {"type": "string_check", "name": name, "input": OUTPUT, "reference": reference, "operation": "eq"}


@pytest.mark.parametrize("spec", [[1], 42, None, "string_check"])
def test_a_grader_that_is_not_an_object_is_a_config_error(spec: Any) -> None:
    with pytest.raises(GraderConfigError, match="must be a JSON object"):
        build_grader(spec)


def test_deeply_nested_json_in_a_sample_is_a_parse_error_not_an_exception() -> None:
    grader = build_grader({**exact("city"), "input": "{{sample.output_json.city}}"})
    [result] = grader.grade([({"answer": "x"}, "[" * 5000)])
    assert (result.reward, list(result.errors)) == (0.0, ["sample_parse_error"])


def test_an_unexpected_exception_inside_a_grader_is_other_error_for_its_batch() -> None:
    grader = build_grader(exact("e"))
    inner = grader.grader  # type: ignore[attr-defined]

    def broken(text: str, reference: str) -> float:
        raise RuntimeError("boom")

    inner.function = broken
    results = grader.grade([({"answer": "1"}, "1"), ({"answer": "2"}, "2")])
    assert [r.reward for r in results] == [0.0, 0.0]
    assert all(r.errors == {"other_error": "RuntimeError: boom"} for r in results)


def test_a_multi_grader_fails_only_when_every_sub_grader_did() -> None:
    spec = {
        "type": "multi",
        "name": "m",
        "graders": {"a": exact("a"), "b": exact("b", "{{item.missing}}")},
        "calculate_output": "0.5 * a + 0.5 * b",
    }
    grader = build_grader(parse_grader(spec))
    [partly] = grader.grade([({"answer": "42"}, "42")])
    assert partly.reward == 0.5 and partly.ok  # b's failure counts 0 in the formula, the sample is graded
    assert partly.sub_rewards == {"a": 1.0, "b": 0.0}
    assert partly.scores["b"]["errors"] == {
        "invalid_variable_error": "{{item.missing}} has no value for this item"
    }
    [failed] = grader.grade([({}, "42")])  # neither sub-grader can render: the sample failed
    assert failed.reward == 0.0 and list(failed.errors) == ["invalid_variable_error"]


def test_similarity_compares_at_most_the_first_5000_characters() -> None:
    grader = build_grader(
        {"type": "text_similarity", "name": "r", "input": OUTPUT, "reference": "{{item.answer}}",
         "evaluation_metric": "rouge_l"}
    )  # fmt: skip
    text = "word " * 1000  # 5,000 characters
    [result] = grader.grade([({"answer": text}, text + "tail " * 200_000)])
    assert result.reward == 1.0  # the identical first 5,000 characters; the 1 MB tail is never compared
    assert isinstance(result, GradeResult)
