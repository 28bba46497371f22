"""The job `method`: OpenAI's reinforcement method plus the algorithm choice (see INTERFACES.md).

Every field is checked at create time, so a job that reaches the worker has a valid configuration.
"""

from typing import Annotated, Literal

from pydantic import Field

from app.schemas.common import StrictModel
from jobspec.algorithms import AlgorithmName, CriticKind
from jobspec.compute import AttnImplementation, DType
from jobspec.graders import Grader
from jobspec.selection import ModelSelection

Auto = Literal["auto"]


class ReinforcementHyperparameters(StrictModel):
    """All optional; absent or "auto" values are resolved by the worker from the model's defaults."""

    n_epochs: Annotated[int, Field(ge=1, le=100)] | Auto | None = None
    batch_size: Annotated[int, Field(ge=1, le=4096)] | Auto | None = None  # prompts per step
    learning_rate_multiplier: Annotated[float, Field(gt=0, le=100)] | Auto | None = None
    eval_interval: Annotated[int, Field(ge=1, le=1_000_000)] | Auto | None = None  # steps
    eval_samples: Annotated[int, Field(ge=1, le=64)] | Auto | None = None  # k of avg@k
    # Scales the samples per prompt (RunConfig.compute_multiplier); "auto" is 1.
    compute_multiplier: Annotated[float, Field(gt=0, le=8)] | Auto | None = None
    max_response_tokens: int | None = Field(default=None, ge=1, le=32768)
    # 1024/4096/16384 tokens when max_response_tokens is unset; "default": the model's default budget
    reasoning_effort: Literal["default", "low", "medium", "high"] | None = None
    # Below 0.01 the sampling distribution underflows (5e-324 failed the job at its first step).
    temperature: float | None = Field(default=None, ge=0.01, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    critic: CriticKind | None = None
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
    # The fine-tuned model: "best", the checkpoint with the highest validation pass@1 (the default with a
    # validation file; asked for without one, a 400), or "last", the last step.
    model_selection: ModelSelection | None = None
    # Stop when validation pass@1 has not improved for this many evaluations (needs a validation file).
    early_stopping_patience: int | None = Field(default=None, ge=1, le=1000)
    # devices of one worker host that train the job together; checked against SPPO_TRAINING_DEVICE_COUNTS
    n_devices: int | None = Field(default=None, ge=1, le=64)
    # A completion passes (pass@1, avg@k, accuracy) when its reward is at least this (partial-credit graders).
    pass_threshold: float | None = Field(default=None, gt=0, le=1)
    # Train even when the preflight finds the grader gives the base model a constant reward (warns instead).
    allow_constant_reward: bool | None = None
    # Precision and kernels (docs/engine.md, "Precision"); absent or "auto": the model's default, else
    # bfloat16 on GPUs that have it, checkpointing from 300M parameters, flash-attention 2 when installed.
    dtype: DType | None = None
    gradient_checkpointing: bool | Auto | None = None
    attn_implementation: AttnImplementation | None = None


class ReinforcementMethod(StrictModel):
    algorithm: AlgorithmName = "sppo"
    grader: Grader
    hyperparameters: ReinforcementHyperparameters = Field(default_factory=ReinforcementHyperparameters)


class Method(StrictModel):
    type: Literal["reinforcement"]
    reinforcement: ReinforcementMethod
