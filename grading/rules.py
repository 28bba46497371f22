"""Rule graders: functions of the rendered input and reference texts, run in process.

- string_check: eq, ne, like (input contains reference), ilike (the same ignoring case);
- regex (extension): the first group of the LAST match of `pattern` in input, stripped, compared with the
  reference (eq or ne); a match that takes longer than REGEX_TIMEOUT_S scores 0;
- math (extension): symbolic equivalence of the answer in input and the reference with math-verify.
Each returns a reward in {0, 1}; similarity metrics (grading.similarity) give partial credit.
"""

import threading
from collections.abc import Callable
from typing import Any

import regex

from jobspec.graders import MathGrader, RegexGrader, StringCheckGrader

RuleFunction = Callable[[str, str], float]
REGEX_TIMEOUT_S = 0.25
# math-verify's own timeouts use SIGALRM, which only works on the main thread (see _math_timeout)
MATH_TIMEOUT_S = 5

_COMPARE: dict[str, Callable[[str, str], bool]] = {
    "eq": lambda text, reference: text == reference,
    "ne": lambda text, reference: text != reference,
    "like": lambda text, reference: reference in text,
    "ilike": lambda text, reference: reference.casefold() in text.casefold(),
}


def string_check(spec: StringCheckGrader) -> RuleFunction:
    compare = _COMPARE[spec.operation]
    return lambda text, reference: float(compare(text, reference))


def regex_check(spec: RegexGrader) -> RuleFunction:
    pattern, equal = regex.compile(spec.pattern), spec.operation == "eq"

    def grade(text: str, reference: str) -> float:
        try:
            matches = list(pattern.finditer(text, timeout=REGEX_TIMEOUT_S))
        except TimeoutError:
            return 0.0
        if not matches:
            return 0.0
        extracted = (matches[-1].group(1) or "").strip()
        return float((extracted == reference.strip()) == equal)

    return grade


def _math_timeout() -> int | None:
    """math-verify's signal-based timeout off the main thread raises; there we run without it."""
    return MATH_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def _parse_reference(reference: str, timeout: int | None) -> list[Any]:
    from math_verify import parse

    # bare references such as "2x+1" are read as LaTeX (2*x + 1); the default extraction, tuned for
    # model outputs, would stop at the first number (2)
    if "$" not in reference and "\\boxed" not in reference:
        gold = parse(f"${reference}$", parsing_timeout=timeout)
        if gold:
            return list(gold)
    return list(parse(reference, parsing_timeout=timeout))


def math_check(_: MathGrader) -> RuleFunction:
    # math-verify (and sympy, ~0.3 s) loads when a math grader is first built, not with every process
    # that imports the grading runtime (the API)
    from math_verify import parse, verify

    def grade(text: str, reference: str) -> float:
        timeout = _math_timeout()
        try:
            gold = _parse_reference(reference, timeout)
            answer = parse(text, parsing_timeout=timeout)
            return float(bool(gold and answer and verify(gold, answer, timeout_seconds=timeout)))
        except Exception:
            # model output is untrusted: whatever sympy or the timeout raises means "not verified"
            return 0.0

    return grade
