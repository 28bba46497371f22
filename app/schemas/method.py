"""The job `method`: OpenAI's reinforcement method plus the algorithm choice (see INTERFACES.md).

Every field is checked at create time, so a job that reaches the worker has a valid configuration.
"""

from typing import Annotated, Literal

from pydantic import Field

from app.schemas.common import StrictModel
from jobspec.algorithms import AlgorithmName, CriticKind
from jobspec.compute import AttnImplementation, DType
from jobspec.graders import Grader
from jobspec.limits import (
    Count,
    Fraction,
    GradientCheckpointing,
    LoraAlpha,
    NonNegative,
    OpenFraction,
    Positive,
    Probability,
    Temperature,
)
from jobspec.selection import ModelSelection

Auto = Literal["auto"]


class ReinforcementHyperparameters(StrictModel):
    """All optional; absent or "auto" values are resolved by the worker from the model's defaults."""

    # The limits of what can run are jobspec.limits' types, shared with the engine; the `le` caps here bound
    # what one job may ask of the service.

    n_epochs: Annotated[Count, Field(le=100)] | Auto | None = None
    batch_size: Annotated[Count, Field(le=4096)] | Auto | None = None  # prompts per step
    learning_rate_multiplier: Annotated[Positive, Field(le=100)] | Auto | None = None
    eval_interval: Annotated[Count, Field(le=1_000_000)] | Auto | None = None  # steps
    eval_samples: Annotated[Count, Field(le=64)] | Auto | None = None  # k of avg@k
    # Scales the samples per prompt (RunConfig.compute_multiplier); "auto" is 1.
    compute_multiplier: Annotated[Positive, Field(le=8)] | Auto | None = None
    max_response_tokens: Annotated[Count, Field(le=32768)] | None = None
    # 1024/4096/16384 tokens when max_response_tokens is unset; "default": the model's default budget
    reasoning_effort: Literal["default", "low", "medium", "high"] | None = None
    temperature: Annotated[Temperature, Field(le=2)] | None = None
    top_p: Probability | None = None
    critic: CriticKind | None = None
    # a separate critic built from the first N decoder layers of the base model (a smaller critic)
    critic_layers: Annotated[Count, Field(le=1024)] | None = None
    group_size: Annotated[Count, Field(le=64)] | None = None  # samples per prompt (grpo default 8)
    ppo_epochs: Annotated[Count, Field(le=16)] | None = None
    minibatch_size: Annotated[Count, Field(le=4096)] | None = None
    clip_epsilon: OpenFraction | None = None
    kl_coef: Annotated[NonNegative, Field(le=100)] | None = None
    critic_learning_rate_multiplier: Annotated[Positive, Field(le=100)] | None = None
    gae_gamma: Fraction | None = None
    gae_lambda: Fraction | None = None
    grpo_scale_by_std: bool | None = None
    lora_rank: Annotated[Count, Field(le=256)] | None = None
    lora_alpha: LoraAlpha | None = None
    checkpoint_interval: Annotated[Count, Field(le=1_000_000)] | None = None
    # The fine-tuned model: "best", the checkpoint with the highest validation pass@1 (the default with a
    # validation file; asked for without one, a 400), or "last", the last step.
    model_selection: ModelSelection | None = None
    # Stop when validation pass@1 has not improved for this many evaluations (needs a validation file).
    early_stopping_patience: Annotated[Count, Field(le=1000)] | None = None
    # devices of one worker host that train the job together; checked against SPPO_TRAINING_DEVICE_COUNTS
    n_devices: Annotated[Count, Field(le=64)] | None = None
    # A completion passes (pass@1, avg@k, accuracy) when its reward is at least this (partial-credit graders).
    pass_threshold: Probability | None = None
    # Train even when the preflight finds the grader gives the base model a constant reward (warns instead).
    allow_constant_reward: bool | None = None
    # Precision and kernels (docs/engine.md, "Precision"); absent or "auto": the model's default, else
    # bfloat16 on GPUs that have it, checkpointing from 300M parameters, flash-attention 2 when installed.
    dtype: DType | None = None
    gradient_checkpointing: GradientCheckpointing | None = None
    attn_implementation: AttnImplementation | None = None


class ReinforcementMethod(StrictModel):
    algorithm: AlgorithmName = "sppo"
    grader: Grader
    hyperparameters: ReinforcementHyperparameters = Field(default_factory=ReinforcementHyperparameters)


class Method(StrictModel):
    type: Literal["reinforcement"]
    reinforcement: ReinforcementMethod
