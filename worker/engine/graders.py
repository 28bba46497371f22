"""The engine's view of grading: a grader spec → a batch grader from the torch-free `grading` runtime.

Specs are `jobspec` models (OpenAI's grader shapes plus `regex` and `math`); every reward is a float in
[0, 1]. The run config's `grading` section says where judges and embeddings are reached and how Python
graders are sandboxed (grading.build.GradingContext).
"""

from collections.abc import Mapping
from typing import Any

from grading.sandbox import SandboxUnavailable

from grading.build import BatchGrader, GraderConfigError, GradingContext, parse_grader
from grading.build import build_grader as _build_grader
from jobspec.graders import MultiGrader, PythonGrader
from jobspec.templates import Sample, TemplateValueError, render
from worker.engine.errors import EngineError

__all__ = ["BatchGrader", "GraderSpecError", "build_grader", "render_reference"]


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


def render_reference(spec: Mapping[str, Any], item: Mapping[str, Any]) -> str:
    """The reference a grader compares against for `item` (shown next to evaluation results); "" for
    graders without one (Python, judges, multi)."""
    model = parse_grader(spec)
    reference = getattr(model, "reference", None)
    if not isinstance(reference, str) or isinstance(model, MultiGrader | PythonGrader):
        return ""
    try:
        return render(reference, item, Sample(""))
    except TemplateValueError:
        return ""
