"""`calculate_output` formulas: what parses, what is refused, and exact values (never `eval`)."""

import math

import pytest

from jobspec.formula import MAX_DEPTH, MAX_LENGTH, FormulaError, parse_formula

NAMES = {"correct", "style", "length"}
VALUES = {"correct": 1.0, "style": 0.5, "length": 0.25}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("correct", 1.0),
        ("0.7 * correct + 0.3 * style", 0.85),
        ("(correct + style + length) / 3", 1.75 / 3),
        ("correct - style", 0.5),
        ("-style + 1", 0.5),
        ("+style", 0.5),
        ("min(correct, style)", 0.5),
        ("max(style, length, 0.1)", 0.5),
        ("min(correct, style, length)", 0.25),
        ("abs(length - correct)", 0.75),
        ("style ^ 2", 0.25),  # ^ is the power operator, not xor
        ("style ** 2", 0.25),
        ("2 ^ 3 ^ 2", 512.0),  # right-associative, like **
        ("length ^ 0.5", 0.5),
        ("sqrt(length)", 0.5),
        ("floor(style * 3)", 1.0),
        ("ceil(style * 3)", 2.0),
        ("exp(0)", 1.0),
        ("log(exp(1))", 1.0),
        ("log(8, 2)", 3.0),
        ("1e-1 * 10", 1.0),
        ("correct * 2", 2.0),  # the formula's value is not clipped here (the grader clips the reward)
    ],
)
def test_exact_results(text: str, expected: float) -> None:
    assert parse_formula(text, NAMES).evaluate(VALUES) == pytest.approx(expected, abs=1e-12)


def test_names_are_the_sub_graders_read() -> None:
    formula = parse_formula("0.5 * correct + 0.5 * max(correct, style)", NAMES)
    assert formula.names == frozenset({"correct", "style"})
    assert formula.text == "0.5 * correct + 0.5 * max(correct, style)"
    assert parse_formula("1", NAMES).names == frozenset()


def test_a_sub_grader_may_share_a_function_name() -> None:
    formula = parse_formula("min(min, 1) + max", {"min", "max"})
    assert formula.names == frozenset({"min", "max"})
    assert formula.evaluate({"min": 0.25, "max": 0.5}) == 0.75


@pytest.mark.parametrize(
    "text",
    [
        "correct / 0",
        "correct / (style - 0.5)",
        "0 ^ -1",
        "log(0)",
        "log(correct, 1)",  # log base 1 divides by zero
        "sqrt(-1)",
        "(-8) ^ (1 / 3)",  # a real power only: no complex numbers
        "abs((-8) ^ (1 / 3))",
        "exp(1000)",  # overflow
        "10 ^ 400",  # past the exponent limit
        "1e308 * 10",  # infinity
        "floor(1e308 * 10)",
    ],
)
def test_math_errors_give_zero(text: str) -> None:
    assert parse_formula(text, NAMES).evaluate(VALUES) == 0.0


@pytest.mark.parametrize(
    "text",
    [
        "correct.__class__",  # attribute access
        "correct.real",
        "__import__('os')",
        "__import__",
        "lambda: 1",
        "unknown",  # not a sub-grader
        "correct + unknown",
        "'text'",
        "correct + 'x'",
        "b'bytes'",
        "True",
        "None",
        "1j",
        "correct > style",
        "correct == 1",
        "correct and style",
        "not correct",
        "~correct",
        "correct if style else length",
        "open('/etc/passwd')",
        "print(correct)",
        "eval('1')",
        "round(correct)",  # not one of the functions
        "min",  # a function name is not a value
        "abs + 1",
        "min(correct)",  # min and max take two or more
        "sqrt(correct, style)",
        "abs()",
        "log(correct, style, length)",
        "max(*[correct])",
        "min(correct, key=style)",
        "correct[0]",
        "[correct]",
        "(correct, style)",
        "{correct}",
        "correct % 2",
        "correct // 2",
        "correct @ style",
        "correct << 1",
        "(x := 1)",
        "correct; style",
        "",
        "   ",
        "1 +",
    ],
)
def test_refusals(text: str) -> None:
    with pytest.raises(FormulaError):
        parse_formula(text, NAMES)


def test_refusal_names_the_unknown_sub_grader() -> None:
    with pytest.raises(FormulaError, match=r"'unknown' is no sub-grader name.*correct"):
        parse_formula("correct + unknown", NAMES)


def test_length_and_depth_limits() -> None:
    long = "+".join(["correct"] * (MAX_LENGTH // 8 + 1))
    assert len(long) > MAX_LENGTH
    with pytest.raises(FormulaError, match="longer"):
        parse_formula(long, NAMES)
    # a deeply nested formula is refused when parsed, so evaluation never runs out of stack
    with pytest.raises(FormulaError, match="nested"):
        parse_formula("-" * 1000 + "correct", NAMES)
    with pytest.raises(FormulaError, match="nested"):
        parse_formula("abs(" * 100 + "correct" + ")" * 100, NAMES)
    # parentheses alone add no nesting
    assert parse_formula("(" * 50 + "correct" + ")" * 50, NAMES).evaluate(VALUES) == 1.0
    shallow = "-" * (MAX_DEPTH // 2) + "correct"
    assert parse_formula(shallow, NAMES).evaluate(VALUES) == 1.0


def test_every_formula_that_parses_evaluates_to_a_finite_float() -> None:
    for text in ["correct / length", "exp(correct) ^ 60", "log(style) * 1e308 * 10", "style ^ -64"]:
        value = parse_formula(text, NAMES).evaluate(VALUES)
        assert isinstance(value, float) and math.isfinite(value)
