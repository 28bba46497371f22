"""A grader spec → a batch grader: `grade([(item, completion), ...]) -> [GradeResult, ...]`.

One batch is graded concurrently where it pays: Python graders across the sandbox pool, judge calls and
embeddings over HTTP with a bound, the sub-graders of a multi grader side by side. Rule and similarity
graders are microseconds per sample and run in the calling thread.
"""

import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import TypeAdapter, ValidationError

from grading.embeddings import EmbeddingsError, EmbeddingsTarget, cosine_similarities
from grading.judges import JudgeLimits, JudgeTarget, ModelJudge
from grading.result import GradeResult, clip_reward
from grading.rules import RuleFunction, math_check, regex_check, string_check
from grading.sandbox import PythonGraderPool, SandboxLimits
from jobspec.graders import (
    Grader,
    LabelModelGrader,
    MathGrader,
    MultiGrader,
    PythonGrader,
    RegexGrader,
    ScoreModelGrader,
    StringCheckGrader,
    TextSimilarityGrader,
    is_type_tag,
)
from jobspec.templates import Sample, TemplateValueError, render

Call = tuple[Mapping[str, Any], str]  # (item, completion text)
GRADER_ADAPTER: TypeAdapter[Any] = TypeAdapter(Grader)


class GraderConfigError(ValueError):
    """The grader cannot be built here; `param` names the field (e.g. `grader.model`)."""

    def __init__(self, message: str, param: str = "grader") -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class GradingContext:
    """What building graders needs beyond the spec: sandbox limits and where judges and embeddings live.

    `judges` maps each judge model name a spec may use to where it is reached (the service resolves the
    tenant's models into this map); an external endpoint's key is read from the environment variable named
    by `api_key_env`, so it is never written into a run's config file.
    """

    python_pool_size: int = 2
    sandbox_limits: SandboxLimits = field(default_factory=SandboxLimits)
    python_unsandboxed: bool = False
    judges: Mapping[str, JudgeTarget] = field(default_factory=dict)
    judge_limits: JudgeLimits = field(default_factory=JudgeLimits)
    embeddings: EmbeddingsTarget | None = None
    api_key_env: str | None = None

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], api_key: str | None = None) -> "GradingContext":
        """The context a run config carries (plain JSON/YAML values); the external endpoints' key is
        `api_key`, else the environment variable named by `api_key_env`."""
        if api_key is None and values.get("api_key_env"):
            api_key = os.environ.get(values["api_key_env"])
        key = api_key
        judges = {
            name: JudgeTarget(**target) if target.get("internal") else JudgeTarget(**target, api_key=key)
            for name, target in (values.get("judges") or {}).items()
        }
        embeddings = values.get("embeddings")
        if embeddings is not None:
            embeddings = EmbeddingsTarget(**embeddings, api_key=None if embeddings.get("internal") else key)
        return cls(
            python_pool_size=int(values.get("python_pool_size", 2)),
            sandbox_limits=SandboxLimits(**(values.get("sandbox_limits") or {})),
            python_unsandboxed=bool(values.get("python_unsandboxed", False)),
            judges=judges,
            judge_limits=JudgeLimits(**(values.get("judge_limits") or {})),
            embeddings=embeddings,
            api_key_env=values.get("api_key_env"),
        )


class BatchGrader(Protocol):
    name: str

    def grade(self, calls: Sequence[Call]) -> list[GradeResult]: ...

    def close(self) -> None: ...


def _render_pair(input: str, reference: str, call: Call) -> tuple[str, str] | GradeResult:
    """The rendered input and reference of one call, or the failed result a missing value gives."""
    item, completion = call
    sample = Sample(completion)
    try:
        return render(input, item, sample), render(reference, item, sample)
    except TemplateValueError as exc:
        return GradeResult.failed(exc.flag, str(exc))


@dataclass
class _TextGrader:
    """Graders that compare a rendered input with a rendered reference, one sample at a time."""

    name: str
    input: str
    reference: str
    function: RuleFunction
    metric: str

    def grade(self, calls: Sequence[Call]) -> list[GradeResult]:
        results = []
        for call in calls:
            started = time.perf_counter()
            texts = _render_pair(self.input, self.reference, call)
            if isinstance(texts, GradeResult):
                results.append(texts)
                continue
            reward = self.function(*texts)
            elapsed = time.perf_counter() - started
            results.append(GradeResult(reward, scores={self.metric: reward}, execution_time=elapsed))
        return results

    def close(self) -> None:
        pass


@dataclass
class _CosineGrader:
    """text_similarity `cosine`: one batched embeddings request for the whole step."""

    name: str
    input: str
    reference: str
    target: EmbeddingsTarget
    timeout_s: float

    def grade(self, calls: Sequence[Call]) -> list[GradeResult]:
        started = time.perf_counter()
        rendered = [_render_pair(self.input, self.reference, call) for call in calls]
        pairs = [texts for texts in rendered if not isinstance(texts, GradeResult)]
        try:
            scores = iter(cosine_similarities(self.target, pairs, timeout_s=self.timeout_s) if pairs else [])
        except EmbeddingsError as exc:
            return [
                texts
                if isinstance(texts, GradeResult)
                else GradeResult.failed("model_grader_server_error", str(exc))
                for texts in rendered
            ]
        elapsed = (time.perf_counter() - started) / max(1, len(calls))
        results = []
        for texts in rendered:
            if isinstance(texts, GradeResult):
                results.append(texts)
            else:
                value = next(scores)
                results.append(GradeResult(value, scores={"cosine": value}, execution_time=elapsed))
        return results

    def close(self) -> None:
        pass


@dataclass
class _PythonGrader:
    name: str
    pool: PythonGraderPool

    def grade(self, calls: Sequence[Call]) -> list[GradeResult]:
        return self.pool.run([(Sample(completion).as_dict(), item) for item, completion in calls])

    def close(self) -> None:
        self.pool.close()


@dataclass
class _JudgeGrader:
    name: str
    judge: ModelJudge

    def grade(self, calls: Sequence[Call]) -> list[GradeResult]:
        return self.judge.grade([(item, Sample(completion)) for item, completion in calls])

    def close(self) -> None:
        pass


@dataclass
class _MultiGrader:
    """Sub-graders side by side; a failed sub-grader counts 0 in the formula and its flags are kept."""

    name: str
    spec: MultiGrader
    graders: dict[str, BatchGrader]

    def grade(self, calls: Sequence[Call]) -> list[GradeResult]:
        with ThreadPoolExecutor(max_workers=len(self.graders)) as pool:
            futures = {name: pool.submit(grader.grade, calls) for name, grader in self.graders.items()}
            by_name = {name: future.result() for name, future in futures.items()}
        formula, results = self.spec.formula, []
        for index in range(len(calls)):
            subs = {name: by_name[name][index] for name in self.graders}
            sub_rewards = {name: result.reward for name, result in subs.items()}
            combined = GradeResult(
                clip_reward(formula.evaluate(sub_rewards)) or 0.0,
                sub_rewards=sub_rewards,
                scores={name: result.scores for name, result in subs.items()},
                token_usage=sum(result.token_usage for result in subs.values()),
                execution_time=max(result.execution_time for result in subs.values()),
            )
            for result in subs.values():
                combined.errors.update(result.errors)
            results.append(combined)
        return results

    def close(self) -> None:
        for grader in self.graders.values():
            grader.close()


def parse_grader(spec: Mapping[str, Any] | Any) -> Any:
    """The validated spec model; GraderConfigError naming the first invalid field."""
    if not isinstance(spec, Mapping):
        return spec
    try:
        return GRADER_ADAPTER.validate_python(dict(spec))
    except ValidationError as exc:
        error = exc.errors()[0]
        # the tagged union's chosen type is part of the location, not of the field's path
        loc = ["grader"]
        for part in error["loc"]:
            if not is_type_tag(loc, str(part)):
                loc.append(str(part))
        if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc.append("type")  # the `type` chose no known grader
        raise GraderConfigError(error["msg"], ".".join(loc)) from None


def _judge_target(context: GradingContext, model: str, param: str) -> JudgeTarget:
    target = context.judges.get(model)
    if target is None:
        raise GraderConfigError(f"judge model '{model}' is not available; see GET /v1/models", param)
    return target


Builder = Callable[[Any, GradingContext, str], BatchGrader]


def _build(spec: Any, context: GradingContext, param: str) -> BatchGrader:
    if isinstance(spec, StringCheckGrader):
        return _TextGrader(spec.name, spec.input, spec.reference, string_check(spec), spec.type)
    if isinstance(spec, RegexGrader):
        return _TextGrader(spec.name, spec.input, spec.reference, regex_check(spec), spec.type)
    if isinstance(spec, MathGrader):
        return _TextGrader(spec.name, spec.input, spec.reference, math_check(spec), spec.type)
    if isinstance(spec, TextSimilarityGrader):
        metric = spec.evaluation_metric
        if metric != "cosine":
            return _TextGrader(spec.name, spec.input, spec.reference, _metric(metric), metric)
        if context.embeddings is None:
            raise GraderConfigError(
                "cosine similarity needs an embeddings model: the operator sets SPPO_GRADER_EMBEDDINGS_MODEL",
                f"{param}.evaluation_metric",
            )
        return _CosineGrader(spec.name, spec.input, spec.reference, context.embeddings,
                             context.judge_limits.timeout_s)  # fmt: skip
    if isinstance(spec, PythonGrader):
        pool = PythonGraderPool(spec.source, size=context.python_pool_size, limits=context.sandbox_limits,
                                unsandboxed=context.python_unsandboxed)  # fmt: skip
        return _PythonGrader(spec.name, pool)
    if isinstance(spec, ScoreModelGrader | LabelModelGrader):
        target = _judge_target(context, spec.model, f"{param}.model")
        return _JudgeGrader(spec.name, ModelJudge(spec, target, context.judge_limits))
    assert isinstance(spec, MultiGrader)
    graders: dict[str, BatchGrader] = {}
    try:
        for name, sub in spec.graders.items():
            graders[name] = _build(sub, context, f"{param}.graders.{name}")
    except BaseException:
        for grader in graders.values():
            grader.close()
        raise
    return _MultiGrader(spec.name, spec, graders)


def _metric(metric: str) -> RuleFunction:
    # the metric libraries (nltk, sacrebleu, rouge-score: ~0.3 s) load with the first similarity grader
    from grading.similarity import similarity

    return lambda text, reference: similarity(metric, text, reference)


def build_grader(spec: Mapping[str, Any] | Any, context: GradingContext | None = None) -> BatchGrader:
    """The batch grader of a spec (a dict or a `jobspec` model); GraderConfigError naming the param.

    Close it when done: a Python grader holds warm sandboxes.
    """
    return _build(parse_grader(spec), context or GradingContext(), "grader")
