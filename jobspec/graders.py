"""Grader specs: OpenAI's grader shapes exactly (the SDK's `types/graders/*`), plus `regex` and `math`.

Every grader gives a reward in [0, 1]. The models check everything that can be checked without running a
grader: templates, regular expressions, Python syntax and a `grade` function, formula names, score ranges
and labels. A `multi` grader holds named sub-graders of any other type.
"""

import ast
from typing import Annotated, Any, Literal

import regex
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from jobspec.formula import Formula, parse_formula
from jobspec.templates import check_template
from jobspec.text import check_texts

MAX_PYTHON_SOURCE = 256 * 1024
MAX_PYTHON_SUBGRADERS = 4
SIMILARITY_METRICS = (
    "cosine",
    "fuzzy_match",
    "bleu",
    "gleu",
    "meteor",
    "rouge_1",
    "rouge_2",
    "rouge_3",
    "rouge_4",
    "rouge_5",
    "rouge_l",
)


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _clean_text(cls, value: Any) -> Any:
        return check_texts(value)


Template = Annotated[str, Field(max_length=16384), AfterValidator(check_template)]
Name = Annotated[str, Field(min_length=1, max_length=128)]
# OpenAI's examples carry it on graders that give partial credit: the reward at which a sample passes. Here it
# is the default of the job's `pass_threshold` hyperparameter (pass@1, avg@k, accuracy).
PassThreshold = Annotated[float | None, Field(gt=0, le=1)]


class StringCheckGrader(_Spec):
    """eq / ne: exact (in)equality; like: input contains reference; ilike: the same ignoring case."""

    type: Literal["string_check"]
    name: Name
    input: Template
    reference: Template
    operation: Literal["eq", "ne", "like", "ilike"]


class TextSimilarityGrader(_Spec):
    """A similarity in [0, 1] of input and reference (identical texts score 1.0 on every metric)."""

    type: Literal["text_similarity"]
    name: Name
    pass_threshold: PassThreshold = None
    input: Template
    reference: Template
    evaluation_metric: Literal[SIMILARITY_METRICS]  # type: ignore[valid-type]


class MathGrader(_Spec):
    """Extension: symbolic equivalence of the answer in input and reference (math-verify)."""

    type: Literal["math"]
    name: Name
    input: Template
    reference: Template


class RegexGrader(_Spec):
    """Extension: the first group of the LAST match of `pattern` in input, stripped, == reference."""

    type: Literal["regex"]
    name: Name
    input: Template
    pattern: str = Field(min_length=1, max_length=1024)
    reference: Template
    operation: Literal["eq", "ne"] = "eq"

    @field_validator("pattern")
    @classmethod
    def _one_group(cls, pattern: str) -> str:
        # checked with the engine that runs it (`regex`: \p{L} is valid, some `re` syntax differs)
        try:
            compiled = regex.compile(pattern)
        except regex.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        if compiled.groups != 1:
            raise ValueError("the pattern must have exactly one capturing group")
        return pattern


def check_python_source(source: str) -> str:
    """The source, unchanged, when it parses and defines a top-level `grade(sample, item)` (never run)."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise ValueError(f"syntax error at line {exc.lineno}: {exc.msg}") from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise ValueError(f"cannot be parsed: {type(exc).__name__}") from None
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == "grade":
            if isinstance(node, ast.AsyncFunctionDef):
                raise ValueError("grade must be a plain function, not async")
            if len(node.args.args) + len(node.args.posonlyargs) < 2 and node.args.vararg is None:
                raise ValueError("grade must take two arguments: grade(sample, item)")
            return source
    raise ValueError("the source must define a top-level function grade(sample, item) -> float")


class PythonGrader(_Spec):
    """`def grade(sample, item) -> float`, run in a sandbox; the result is clipped to [0, 1]."""

    type: Literal["python"]
    name: Name
    pass_threshold: PassThreshold = None
    source: Annotated[
        str, Field(min_length=1, max_length=MAX_PYTHON_SOURCE), AfterValidator(check_python_source)
    ]
    # OpenAI picks a runtime image by tag; there is one sandbox image here, so a tag is accepted and ignored
    image_tag: str | None = Field(default=None, max_length=128)


class InputText(_Spec):
    type: Literal["input_text"]
    text: Template


class OutputText(_Spec):
    type: Literal["output_text"]
    text: Template


ContentPart = Annotated[InputText | OutputText, Field(discriminator="type")]


class JudgeMessage(_Spec):
    """One message sent to a judge model; text content only (images and audio are refused)."""

    role: Literal["user", "assistant", "system", "developer"]
    content: Template | ContentPart | Annotated[list[ContentPart], Field(min_length=1, max_length=32)]
    type: Literal["message"] | None = None

    def templates(self) -> list[str]:
        """The message's text parts, in order."""
        if isinstance(self.content, str):
            return [self.content]
        parts = self.content if isinstance(self.content, list) else [self.content]
        return [part.text for part in parts]


class SamplingParams(_Spec):
    max_completions_tokens: int | None = Field(default=None, ge=1, le=32768)
    # passed to endpoints that know it (reasoning models); our own model server ignores it
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    seed: int | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)


JudgeInput = Annotated[list[JudgeMessage], Field(min_length=1, max_length=64)]
JudgeModel = Annotated[str, Field(min_length=1, max_length=256)]


class ScoreModelGrader(_Spec):
    """A judge model replies with a number in `range`; the reward is its position in the range, in [0, 1]."""

    type: Literal["score_model"]
    name: Name
    pass_threshold: PassThreshold = None
    model: JudgeModel
    input: JudgeInput
    range: Annotated[list[float], Field(min_length=2, max_length=2)] | None = None
    sampling_params: SamplingParams | None = None

    @field_validator("range")
    @classmethod
    def _increasing(cls, bounds: list[float] | None) -> list[float] | None:
        if bounds is not None and not bounds[0] < bounds[1]:
            raise ValueError("range must be two numbers [low, high] with low < high")
        return bounds

    @property
    def bounds(self) -> tuple[float, float]:
        """The score range (OpenAI's default is [0, 1])."""
        low, high = self.range or (0.0, 1.0)
        return low, high


class LabelModelGrader(_Spec):
    """A judge model picks one of `labels`; reward 1 for a label in `passing_labels`, else 0."""

    type: Literal["label_model"]
    name: Name
    model: JudgeModel
    input: JudgeInput
    labels: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=256)]], Field(min_length=2, max_length=64)
    ]
    passing_labels: Annotated[list[str], Field(min_length=1, max_length=64)]
    sampling_params: SamplingParams | None = None

    # field validators, not a model validator, so that the error's location names the field
    @field_validator("labels")
    @classmethod
    def _distinct(cls, labels: list[str]) -> list[str]:
        if len(set(labels)) != len(labels):
            raise ValueError("labels must be distinct")
        return labels

    @field_validator("passing_labels")
    @classmethod
    def _passing_are_labels(cls, passing: list[str], info: ValidationInfo) -> list[str]:
        labels = info.data.get("labels")  # absent when labels itself is invalid (that error is reported)
        unknown = [label for label in passing if labels is not None and label not in labels]
        if unknown:
            raise ValueError(f"passing_labels {unknown} are not among labels {labels}")
        return passing


SubGrader = Annotated[
    StringCheckGrader
    | TextSimilarityGrader
    | MathGrader
    | RegexGrader
    | PythonGrader
    | ScoreModelGrader
    | LabelModelGrader,
    Field(discriminator="type"),
]


class MultiGrader(_Spec):
    """Named sub-graders combined by `calculate_output`, e.g. "0.7 * correct + 0.3 * style"."""

    type: Literal["multi"]
    name: Name
    pass_threshold: PassThreshold = None
    graders: dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")], SubGrader] = Field(
        min_length=1, max_length=16
    )
    calculate_output: str = Field(min_length=1)

    @field_validator("graders", mode="before")
    @classmethod
    def _single_grader(cls, graders: Any) -> Any:
        # The SDK types `graders` as one grader object; OpenAI's guide passes a name → grader map. A single
        # grader is the map of its own name to it.
        if isinstance(graders, dict) and isinstance(graders.get("type"), str):
            return {graders.get("name", "grader"): graders}
        return graders

    @field_validator("graders")
    @classmethod
    def _few_sandboxes(cls, graders: dict[str, Any]) -> dict[str, Any]:
        # each Python sub-grader holds a pool of warm sandboxes (~50-150 MB each) for a whole job
        python = sum(isinstance(sub, PythonGrader) for sub in graders.values())
        if python > MAX_PYTHON_SUBGRADERS:
            raise ValueError(f"at most {MAX_PYTHON_SUBGRADERS} python sub-graders (combine their checks)")
        return graders

    @field_validator("calculate_output")
    @classmethod
    def _formula_names(cls, text: str, info: ValidationInfo) -> str:
        graders = info.data.get("graders")  # absent when graders itself is invalid (that error is reported)
        if graders is not None:
            parse_formula(text, set(graders))
        return text

    @property
    def formula(self) -> Formula:
        return parse_formula(self.calculate_output, set(self.graders))


Grader = Annotated[SubGrader | MultiGrader, Field(discriminator="type")]
GRADER_TYPES = (
    "string_check",
    "text_similarity",
    "python",
    "score_model",
    "label_model",
    "multi",
    "regex",
    "math",
)
