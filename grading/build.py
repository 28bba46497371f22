"""A grader spec → a batch grader: `grade([(item, completion), ...]) -> [GradeResult, ...]`.

One batch is graded concurrently where it pays: Python graders across the sandbox pool, judge calls and
embeddings over HTTP with a bound, the sub-graders of a multi grader that wait on those side by side. Rule
and similarity graders run in the calling thread (math-verify's timeout works only on the main thread).
Whatever goes wrong inside a grader, `grade` returns a result for every call: a failure is reward 0 with
an error flag, never an exception that would fail a training step.
"""

import logging
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, TypeAdapter, ValidationError

from grading.context import GradingContext
from grading.embeddings import EmbeddingsError, EmbeddingsTarget, cosine_similarities
from grading.judges import JudgeTarget, ModelJudge
from grading.result import GradeResult, clip_reward
from grading.rules import RuleFunction, math_check, regex_check, string_check
from grading.sandbox import PythonGraderPool
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
)
from jobspec.templates import Sample, TemplateValueError, render
from jobspec.walk import is_type_tag

log = logging.getLogger(__name__)
Call = tuple[Mapping[str, Any], str]  # (item, completion text)
GRADER_ADAPTER: TypeAdapter[Any] = TypeAdapter(Grader)
# similarity metrics compare at most this much of each text: ROUGE-L's LCS table grows with the product of
# both lengths, and a 1 MB sample would hold a step (or an API thread) for minutes
MAX_SIMILARITY_CHARS = 5000


class GraderConfigError(ValueError):
    """The grader cannot be built here; `param` names the field (e.g. `grader.model`)."""

    def __init__(self, message: str, param: str = "grader") -> None:
        super().__init__(message)
        self.param = param


class BatchGrader(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def waits(self) -> bool:
        """Whether it waits on other processes or the network (worth a thread inside a multi grader)."""

    def grade(self, calls: Sequence[Call]) -> list[GradeResult]: ...

    def close(self) -> None: ...


@dataclass
class _Guarded:
    """A grader whose unexpected exceptions become `other_error` results for its batch."""

    grader: BatchGrader

    @property
    def name(self) -> str:
        return self.grader.name

    @property
    def waits(self) -> bool:
        return self.grader.waits

    def grade(self, calls: Sequence[Call]) -> list[GradeResult]:
        try:
            return self.grader.grade(calls)
        except Exception as exc:
            log.exception("grader %r failed on a batch of %d", self.grader.name, len(calls))
            return [GradeResult.failed("other_error", f"{type(exc).__name__}: {exc}"[:500]) for _ in calls]

    def close(self) -> None:
        self.grader.close()


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
    waits = False

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
    waits = True

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
    waits = True

    def grade(self, calls: Sequence[Call]) -> list[GradeResult]:
        return self.pool.run([(Sample(completion).as_dict(), item) for item, completion in calls])

    def close(self) -> None:
        self.pool.close()


@dataclass
class _JudgeGrader:
    name: str
    judge: ModelJudge
    waits = True

    def grade(self, calls: Sequence[Call]) -> list[GradeResult]:
        return self.judge.grade([(item, Sample(completion)) for item, completion in calls])

    def close(self) -> None:
        pass


@dataclass
class _MultiGrader:
    """Sub-graders side by side. A failed sub-grader counts 0 in the formula, its flags kept in its scores
    (`scores[name]["errors"]`); the combined result fails (reward 0, the flags) only when all of them did."""

    name: str
    spec: MultiGrader
    graders: dict[str, BatchGrader]
    waits = True

    def grade(self, calls: Sequence[Call]) -> list[GradeResult]:
        waiting = {name: grader for name, grader in self.graders.items() if grader.waits}
        with ThreadPoolExecutor(max_workers=max(1, len(waiting))) as pool:
            futures = {name: pool.submit(grader.grade, calls) for name, grader in waiting.items()}
            by_name = {name: g.grade(calls) for name, g in self.graders.items() if name not in waiting}
            by_name |= {name: future.result() for name, future in futures.items()}
        return [
            self._combine({name: by_name[name][index] for name in self.graders})
            for index in range(len(calls))
        ]

    def _combine(self, subs: dict[str, GradeResult]) -> GradeResult:
        sub_rewards = {name: result.reward for name, result in subs.items()}
        combined = GradeResult(
            clip_reward(self.spec.formula.evaluate(sub_rewards)) or 0.0,
            sub_rewards=sub_rewards,
            scores={
                name: {**r.scores, "errors": r.errors} if r.errors else r.scores for name, r in subs.items()
            },
            token_usage=sum(result.token_usage for result in subs.values()),
            execution_time=max(result.execution_time for result in subs.values()),
        )
        if all(not result.ok for result in subs.values()):
            combined.reward = 0.0
            for result in subs.values():
                combined.errors.update(result.errors)
        return combined

    def close(self) -> None:
        for grader in self.graders.values():
            grader.close()


def parse_grader(spec: Mapping[str, Any] | Any) -> Any:
    """The validated spec model; GraderConfigError naming the first invalid field."""
    if isinstance(spec, BaseModel):
        return spec
    if not isinstance(spec, Mapping):
        raise GraderConfigError("the grader must be a JSON object")
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


def _build(spec: Any, context: GradingContext, param: str) -> BatchGrader:
    return _Guarded(_build_unguarded(spec, context, param))


def _build_unguarded(spec: Any, context: GradingContext, param: str) -> BatchGrader:
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

    limit = MAX_SIMILARITY_CHARS
    return lambda text, reference: similarity(metric, text[:limit], reference[:limit])


def build_grader(spec: Mapping[str, Any] | Any, context: GradingContext | None = None) -> BatchGrader:
    """The batch grader of a spec (a dict or a `jobspec` model); GraderConfigError naming the param.

    Close it when done: a Python grader holds warm sandboxes.
    """
    return _build(parse_grader(spec), context or GradingContext(), "grader")
