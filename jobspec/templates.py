"""Grader templates: `{{item.a.b}}`, `{{sample.output_text}}`, `{{sample.output_json.x}}`.

Rendering is plain substitution, never evaluation: a placeholder is replaced by the value it names (strings
as they are, anything else as JSON text), in one pass, so substituted text is never scanned again.
"""

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_PLACEHOLDER = re.compile(r"\{\{\s*(.*?)\s*\}\}")
_SEGMENT = r"[A-Za-z0-9_\-]+"
# `item` needs a field (OpenAI: a namespace AND a variable); `sample.output_json` alone is the whole value
_VARIABLE = re.compile(rf"(item(?=\.)|sample\.output_json)((?:\.{_SEGMENT})*)|sample\.output_text")
# what may not survive outside placeholders: Jinja tags and comments would reach the grader as literal text
_TAG_MARKS = ("{{", "}}", "{%", "%}", "{#", "#}")
ItemPath = tuple[str, ...]


class TemplateSyntaxError(ValueError):
    """The template uses a variable or tag that is not allowed."""


class TemplateValueError(LookupError):
    """A valid template cannot be rendered for this item and sample; `flag` is OpenAI's error flag."""

    def __init__(self, message: str, flag: str) -> None:
        super().__init__(message)
        self.flag = flag


@dataclass(frozen=True)
class Sample:
    """The `sample` namespace: the completion's text and, when that text is JSON, its parsed value."""

    output_text: str

    @property
    def output_json(self) -> Any:
        """The parsed completion; TemplateValueError (sample_parse_error) when it is not JSON."""
        parsed = _parse_json(self.output_text)
        if parsed is _NOT_JSON:
            raise TemplateValueError(
                "the sample is not valid JSON, so {{sample.output_json}} has no value", "sample_parse_error"
            )
        return parsed

    def as_dict(self) -> dict[str, Any]:
        """The `sample` argument a Python grader receives (`output_json` None when the text is not JSON)."""
        parsed = _parse_json(self.output_text)
        return {"output_text": self.output_text, "output_json": None if parsed is _NOT_JSON else parsed}


_NOT_JSON = object()


def _parse_json(text: str) -> Any:
    # a model's output is untrusted: "[" * 5000 parses into RecursionError, not ValueError
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return _NOT_JSON


def check_template(template: str) -> str:
    """The template, unchanged; TemplateSyntaxError naming the first variable or tag that is not allowed."""
    for placeholder in _PLACEHOLDER.finditer(template):
        if _VARIABLE.fullmatch(placeholder.group(1)) is None:
            raise TemplateSyntaxError(
                f"unknown template variable {{{{{placeholder.group(1)}}}}}; use {{{{item.<field>}}}} "
                "(nested: {{item.a.b}}), {{sample.output_text}} or {{sample.output_json.<field>}}"
            )
    rest = _PLACEHOLDER.sub("", template)
    if any(mark in rest for mark in _TAG_MARKS):
        raise TemplateSyntaxError("templates are plain substitution: no {% %} or {# #} tags, no stray braces")
    return template


def item_paths(template: str) -> set[ItemPath]:
    """The item paths a (checked) template reads: `{{item.meta.gold}}` → {("meta", "gold")}."""
    paths = set()
    for placeholder in _PLACEHOLDER.finditer(template):
        variable = _VARIABLE.fullmatch(placeholder.group(1))
        if variable is not None and variable.group(1) == "item":
            paths.add(tuple(variable.group(2).split(".")[1:]))
    return paths


def _lookup(value: Any, path: ItemPath, name: str) -> Any:
    for depth, key in enumerate(path):
        if isinstance(value, Mapping) and key in value:
            value = value[key]
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            where = ".".join((name, *path[: depth + 1]))
            raise TemplateValueError(f"{{{{{where}}}}} has no value for this item", "invalid_variable_error")
    return value


def as_text(value: Any) -> str:
    """How a value is substituted: strings as they are, anything else as JSON (42 → "42", true → "true")."""
    return value if isinstance(value, str) else json.dumps(value)


def render(template: str, item: Mapping[str, Any], sample: Sample) -> str:
    """The template with every placeholder replaced; TemplateValueError when a value is missing."""

    def substitute(placeholder: re.Match[str]) -> str:
        variable = _VARIABLE.fullmatch(placeholder.group(1))
        assert variable is not None, "render takes checked templates"
        if variable.group(1) is None:
            return sample.output_text
        path = tuple(variable.group(2).split(".")[1:])
        if variable.group(1) == "item":
            return as_text(_lookup(item, path, "item"))
        return as_text(_lookup(sample.output_json, path, "sample.output_json"))

    return _PLACEHOLDER.sub(substitute, template)


MAX_PATH_DEPTH = 6
"""How deep a file's field paths are recorded; a template path is checked against the file up to this."""


def present_paths(item: Mapping[str, Any], *, max_depth: int = MAX_PATH_DEPTH) -> set[str]:
    """Every dotted path into an item's objects, e.g. {"answer", "meta", "meta.gold"} (for file checks)."""
    found: set[str] = set()

    def walk(value: Mapping[str, Any], prefix: str, depth: int) -> None:
        for key, child in value.items():
            path = f"{prefix}{key}"
            found.add(path)
            if isinstance(child, Mapping) and depth < max_depth:
                walk(child, f"{path}.", depth + 1)

    walk(item, "", 1)
    return found
