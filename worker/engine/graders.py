"""The engine's view of grading: a grader spec → a batch grader from the torch-free `grading` runtime.

Specs are `jobspec` models (OpenAI's grader shapes plus `regex` and `math`); every reward is a float in
[0, 1]. The run config's `grading` section says where judges and embeddings are reached and how Python
graders are sandboxed (grading.context.GradingContext).
"""

from collections.abc import Mapping
from typing import Any

from grading.build import BatchGrader, GraderConfigError, parse_grader
from grading.build import build_grader as _build_grader
from grading.context import GradingContext
from grading.sandbox import SandboxUnavailable
from jobspec.templates import Sample, TemplateValueError, render
from worker.engine.errors import EngineError

__all__ = ["BatchGrader", "GraderSpecError", "build_grader", "reference_template", "render_reference"]


class GraderSpecError(EngineError):
    """The grader spec is invalid, or cannot run here; `param` names the offending field."""

    def __init__(self, message: str, param: str | None = "grader", code: str = "invalid_grader") -> None:
        super().__init__(code, message, param)


def build_grader(spec: Mapping[str, Any], grading: Mapping[str, Any] | None = None) -> BatchGrader:
    """The batch grader of a spec; GraderSpecError naming the param when it is invalid or cannot run."""
    try:
        return _build_grader(spec, GradingContext.from_dict(grading or {}))
    except GraderConfigError as exc:
        raise GraderSpecError(str(exc), exc.param) from None
    except SandboxUnavailable as exc:
        raise GraderSpecError(
            f"this worker cannot run Python graders: {exc}", "grader", code="python_grader_unavailable"
        ) from None


def reference_template(spec: Mapping[str, Any]) -> str | None:
    """The reference template of a grader that has one (rule and similarity graders), else None."""
    reference = getattr(parse_grader(spec), "reference", None)
    return reference if isinstance(reference, str) else None


def render_reference(template: str | None, item: Mapping[str, Any]) -> str:
    """The reference a grader compares against for `item` (shown next to evaluation results); "" for
    graders without one (Python, judges, multi) or when the item lacks a value."""
    if template is None:
        return ""
    try:
        return render(template, item, Sample(""))
    except TemplateValueError:
        return ""
