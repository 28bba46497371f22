"""Grader specs (the `grader` object of a reinforcement job) → reward functions `(item, completion) -> float`.

Three grader types, following OpenAI's reinforcement fine-tuning graders:
- string_check: compare rendered `input` with rendered `reference` (eq, ne, like = input contains the
  reference, ilike = the same ignoring case);
- math: symbolic equivalence of the answer in `input` and `reference` with math-verify;
- regex: the first capturing group of the LAST match of `pattern` in `input`, stripped, compared with
  `reference` (eq, or ne).
Templates may only hold `{{item.<field>}}` and `{{sample.output_text}}`; rendering is plain substitution,
never evaluation. Every reward is 0.0 or 1.0.
"""

import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import regex
from math_verify import parse, verify

from worker.engine.errors import EngineError

Grader = Callable[[Mapping[str, Any], str], float]

# one `{{ ... }}` placeholder; the content is checked against the two allowed forms below
_PLACEHOLDER = regex.compile(r"\{\{\s*(.*?)\s*\}\}")
_ITEM_FIELD = regex.compile(r"item\.([A-Za-z_][A-Za-z0-9_]*)")
_SAMPLE_OUTPUT = "sample.output_text"
# a single regex match (or non-match) may not take longer; catastrophic backtracking then scores 0
REGEX_TIMEOUT_S = 0.25
# math-verify's own timeouts use SIGALRM, which only works on the main thread (see _math_timeout)
MATH_TIMEOUT_S = 5


class GraderSpecError(EngineError):
    """The grader spec is invalid; `param` names the offending field (e.g. "grader.reference")."""

    def __init__(self, message: str, param: str | None = "grader") -> None:
        super().__init__("invalid_grader", message, param)


class GraderError(EngineError):
    """A valid grader could not grade an item, e.g. the item lacks a field the grader references."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__("grader_error", message, param)


def template_fields(template: str, param: str = "template") -> set[str]:
    """The item fields a template references; GraderSpecError (naming `param`) on any other variable."""
    fields = set()
    for placeholder in _PLACEHOLDER.finditer(template):
        variable = placeholder.group(1)
        item_field = _ITEM_FIELD.fullmatch(variable)
        if item_field is not None:
            fields.add(item_field.group(1))
        elif variable != _SAMPLE_OUTPUT:
            raise GraderSpecError(
                f"unknown template variable {{{{{variable}}}}}; use {{{{item.<field>}}}} or "
                f"{{{{{_SAMPLE_OUTPUT}}}}}",
                param,
            )
    return fields


@dataclass(frozen=True)
class _Template:
    text: str
    param: str

    def render(self, item: Mapping[str, Any], completion: str) -> str:
        def substitute(placeholder: regex.Match[str]) -> str:
            variable = placeholder.group(1)
            if variable == _SAMPLE_OUTPUT:
                return completion
            field = variable.removeprefix("item.")
            if field not in item:
                raise GraderError(
                    f"{self.param} uses {{{{item.{field}}}}} but the item has no field {field!r}; "
                    "add it to every line of the data file or change the grader",
                    self.param,
                )
            value = item[field]
            # JSON text for numbers, booleans and nested values: 42 → "42", true → "true"
            return value if isinstance(value, str) else json.dumps(value)

        # a single pass: substituted text is never scanned again for placeholders
        rendered: str = _PLACEHOLDER.sub(substitute, self.text)
        return rendered


def _string_field(spec: Mapping[str, Any], key: str) -> str:
    value = spec.get(key)
    if not isinstance(value, str):
        raise GraderSpecError(f"grader.{key} must be a string", f"grader.{key}")
    return value


def _template(spec: Mapping[str, Any], key: str) -> _Template:
    text = _string_field(spec, key)
    template_fields(text, f"grader.{key}")
    return _Template(text, f"grader.{key}")


def _choice(spec: Mapping[str, Any], key: str, allowed: tuple[str, ...], default: str | None = None) -> str:
    value = spec.get(key, default)
    if value not in allowed:
        raise GraderSpecError(f"grader.{key} must be one of {', '.join(allowed)}", f"grader.{key}")
    return str(value)


_COMPARE: dict[str, Callable[[str, str], bool]] = {
    "eq": lambda text, reference: text == reference,
    "ne": lambda text, reference: text != reference,
    "like": lambda text, reference: reference in text,
    "ilike": lambda text, reference: reference.casefold() in text.casefold(),
}


def _string_check(spec: Mapping[str, Any]) -> Grader:
    input_, reference = _template(spec, "input"), _template(spec, "reference")
    compare = _COMPARE[_choice(spec, "operation", ("eq", "ne", "like", "ilike"))]

    def grade(item: Mapping[str, Any], completion: str) -> float:
        return float(compare(input_.render(item, completion), reference.render(item, completion)))

    return grade


def _math_timeout() -> int | None:
    """math-verify's signal-based timeout off the main thread raises; there we run without it."""
    return MATH_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def _parse_reference(reference: str, timeout: int | None) -> list[Any]:
    # bare references such as "2x+1" are read as LaTeX (2*x + 1); the default extraction, tuned for
    # model outputs, would stop at the first number (2)
    if "$" not in reference and "\\boxed" not in reference:
        gold = parse(f"${reference}$", parsing_timeout=timeout)
        if gold:
            return list(gold)
    return list(parse(reference, parsing_timeout=timeout))


def _math(spec: Mapping[str, Any]) -> Grader:
    input_, reference = _template(spec, "input"), _template(spec, "reference")

    def grade(item: Mapping[str, Any], completion: str) -> float:
        text, gold_text = input_.render(item, completion), reference.render(item, completion)
        timeout = _math_timeout()
        try:
            gold = _parse_reference(gold_text, timeout)
            answer = parse(text, parsing_timeout=timeout)
            return float(bool(gold and answer and verify(gold, answer, timeout_seconds=timeout)))
        except Exception:
            # model output is untrusted: whatever sympy or the timeout raises means "not verified"
            return 0.0

    return grade


def _regex(spec: Mapping[str, Any]) -> Grader:
    input_, reference = _template(spec, "input"), _template(spec, "reference")
    pattern_text = _string_field(spec, "pattern")
    try:
        pattern = regex.compile(pattern_text)
    except regex.error as error:
        raise GraderSpecError(
            f"grader.pattern is not a valid regular expression: {error}", "grader.pattern"
        ) from None
    if pattern.groups != 1:
        raise GraderSpecError("grader.pattern must have exactly one capturing group", "grader.pattern")
    equal = _choice(spec, "operation", ("eq", "ne"), default="eq") == "eq"

    def grade(item: Mapping[str, Any], completion: str) -> float:
        text = input_.render(item, completion)
        try:
            matches = list(pattern.finditer(text, timeout=REGEX_TIMEOUT_S))
        except TimeoutError:
            return 0.0
        if not matches:
            return 0.0
        extracted = (matches[-1].group(1) or "").strip()
        return float((extracted == reference.render(item, completion).strip()) == equal)

    return grade


_BUILDERS: dict[str, tuple[Callable[[Mapping[str, Any]], Grader], frozenset[str]]] = {
    "string_check": (_string_check, frozenset({"type", "name", "input", "reference", "operation"})),
    "math": (_math, frozenset({"type", "name", "input", "reference"})),
    "regex": (_regex, frozenset({"type", "name", "input", "reference", "pattern", "operation"})),
}


def build_grader(spec: Mapping[str, Any]) -> Grader:
    """The reward function for a grader spec; GraderSpecError naming the param on an invalid spec."""
    if not isinstance(spec, Mapping):
        raise GraderSpecError("grader must be an object")
    grader_type = spec.get("type")
    if grader_type not in _BUILDERS:
        raise GraderSpecError(f"grader.type must be one of {', '.join(_BUILDERS)}", "grader.type")
    builder, allowed_keys = _BUILDERS[grader_type]
    for key in spec:
        if key not in allowed_keys:
            raise GraderSpecError(f"unknown field {key!r} for a {grader_type} grader", f"grader.{key}")
    if "name" in spec and not isinstance(spec["name"], str):
        raise GraderSpecError("grader.name must be a string", "grader.name")
    return builder(spec)


def render_reference(spec: Mapping[str, Any], item: Mapping[str, Any]) -> str:
    """The reference a grader compares against for `item` (shown next to evaluation results)."""
    return _template(spec, "reference").render(item, "")
