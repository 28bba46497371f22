"""The job `method`: OpenAI's reinforcement method plus the algorithm choice (see INTERFACES.md).

Every field is checked at create time, so a job that reaches the worker has a valid configuration.
"""

import re
from typing import Annotated, Literal

import regex
from pydantic import AfterValidator, Field, field_validator

from app.schemas.common import StrictModel

Auto = Literal["auto"]
_PLACEHOLDER = re.compile(r"\{\{\s*(item\.[A-Za-z_][A-Za-z0-9_]*|sample\.output_text)\s*\}\}")
ITEM_FIELD = re.compile(r"\{\{\s*item\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def _check_template(template: str) -> str:
    # Plain substitution only: whatever is left between braces after removing the placeholders is an error,
    # and so is a Jinja tag or comment, which would otherwise be sent to the grader as literal text.
    rest = _PLACEHOLDER.sub("", template)
    if any(mark in rest for mark in ("{{", "}}", "{%", "%}", "{#", "#}")):
        raise ValueError(
            "templates may only use {{item.<field>}} and {{sample.output_text}} (no {% %} or {# #} tags)"
        )
    return template


Template = Annotated[str, Field(max_length=4096), AfterValidator(_check_template)]
Name = Annotated[str, Field(min_length=1, max_length=128)]


def template_fields(template: str) -> set[str]:
    """The item fields a template references (`{{item.answer}}` → {"answer"})."""
    return set(ITEM_FIELD.findall(template))


class StringCheckGrader(StrictModel):
    type: Literal["string_check"]
    name: Name
    input: Template
    reference: Template
    operation: Literal["eq", "ne", "like", "ilike"]


class MathGrader(StrictModel):
    type: Literal["math"]
    name: Name
    input: Template
    reference: Template


class RegexGrader(StrictModel):
    type: Literal["regex"]
    name: Name
    input: Template
    pattern: str = Field(min_length=1, max_length=1024)
    reference: Template
    operation: Literal["eq", "ne"] = "eq"

    @field_validator("pattern")
    @classmethod
    def _one_group(cls, pattern: str) -> str:
        # Checked with the engine the grader runs it with (`regex`: \p{L} is valid, some `re` syntax differs).
        try:
            compiled = regex.compile(pattern)
        except regex.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        if compiled.groups != 1:
            raise ValueError("the pattern must have exactly one capturing group")
        return pattern


Grader = Annotated[StringCheckGrader | MathGrader | RegexGrader, Field(discriminator="type")]


class ReinforcementHyperparameters(StrictModel):
    """All optional; absent or "auto" values are resolved by the worker from the model's defaults."""

    n_epochs: Annotated[int, Field(ge=1, le=100)] | Auto | None = None
    batch_size: Annotated[int, Field(ge=1, le=4096)] | Auto | None = None  # prompts per step
    learning_rate_multiplier: Annotated[float, Field(gt=0, le=100)] | Auto | None = None
    eval_interval: Annotated[int, Field(ge=1, le=1_000_000)] | Auto | None = None  # steps
    eval_samples: Annotated[int, Field(ge=1, le=64)] | Auto | None = None  # k of avg@k
    max_response_tokens: int | None = Field(default=None, ge=1, le=32768)
    reasoning_effort: Literal["low", "medium", "high"] | None = None  # 1024/4096/16384 tokens if above unset
    # Below 0.01 the sampling distribution underflows (5e-324 failed the job at its first step).
    temperature: float | None = Field(default=None, ge=0.01, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    critic: Literal["separate", "shared_lora"] | None = None
    # a separate critic built from the first N decoder layers of the base model (a smaller critic)
    critic_layers: int | None = Field(default=None, ge=1, le=1024)
    group_size: int | None = Field(default=None, ge=1, le=64)  # samples per prompt (grpo default 8)
    ppo_epochs: int | None = Field(default=None, ge=1, le=16)
    minibatch_size: int | None = Field(default=None, ge=1, le=4096)
    clip_epsilon: float | None = Field(default=None, gt=0, lt=1)
    kl_coef: float | None = Field(default=None, ge=0, le=100)
    critic_learning_rate_multiplier: float | None = Field(default=None, gt=0, le=100)
    gae_gamma: float | None = Field(default=None, ge=0, le=1)
    gae_lambda: float | None = Field(default=None, ge=0, le=1)
    grpo_scale_by_std: bool | None = None
    lora_rank: int | None = Field(default=None, ge=1, le=256)
    lora_alpha: float | None = Field(default=None, gt=0, le=4096)  # 1e308 overflowed the LoRA scaling
    checkpoint_interval: int | None = Field(default=None, ge=1, le=1_000_000)
    # devices of one worker host that train the job together; checked against SPPO_TRAINING_DEVICE_COUNTS
    n_devices: int | None = Field(default=None, ge=1, le=64)
    # Train even when the preflight finds the grader gives the base model a constant reward (warns instead).
    allow_constant_reward: bool | None = None


class ReinforcementMethod(StrictModel):
    algorithm: Literal["sppo", "grpo", "ppo"] = "sppo"
    grader: Grader
    hyperparameters: ReinforcementHyperparameters = Field(default_factory=ReinforcementHyperparameters)


class Method(StrictModel):
    type: Literal["reinforcement"]
    reinforcement: ReinforcementMethod

    def grader_fields(self) -> dict[str, set[str]]:
        """Item fields each grader template references, keyed by its param name."""
        grader = self.reinforcement.grader
        return {
            f"method.reinforcement.grader.{attr}": template_fields(getattr(grader, attr))
            for attr in ("input", "reference")
        }
