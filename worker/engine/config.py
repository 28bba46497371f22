"""One typed configuration for a training run, loadable from YAML and validated with clear messages.

Defaults are jobspec.hyperparameters.REFERENCE_DEFAULTS: the reference values for real (1.5B-7B) models
from ALGORITHMS.md, with the actor learning rate raised 10x for LoRA (docs/engine.md gives the sources). A
model directory may carry `sppo_defaults.json` (the fixtures do: tiny CPU models need far larger learning
rates), with per-algorithm values under `algorithms`; those override the reference defaults, and the run's
own values override both (jobspec.hyperparameters.resolve_defaults, the rule the API shows jobs with).
"""

import json
from pathlib import Path
from typing import Any, Literal, Self

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from jobspec.algorithms import AlgorithmName, CriticKind
from jobspec.compute import AttnImplementation, DType
from jobspec.hyperparameters import DEFAULTS_FILE, REFERENCE_DEFAULTS, resolve_defaults, samples_per_prompt
from jobspec.limits import (
    Count,
    EvalInterval,
    Flag,
    Fraction,
    GradientCheckpointing,
    LoraAlpha,
    NonNegative,
    OpenFraction,
    Positive,
    Probability,
    Refusal,
    Temperature,
    hyperparameter_refusal,
    unless,
)
from jobspec.selection import ModelSelection, model_selection
from worker.engine.errors import ConfigError

RolloutBackend = Literal["hf", "vllm"]


class RunConfig(BaseModel):
    """Everything one training run needs. Paths may be relative to the working directory.

    Each field is typed with its limits (jobspec.limits, the API's too); the rules that join fields are
    `_disagreement`'s. `from_dict` reports the first failing field as a ConfigError.
    """

    model_config = ConfigDict(
        extra="forbid",
        strict=True,  # 1 is no boolean, "8" no batch size
        allow_inf_nan=False,
        validate_default=True,
        validate_assignment=True,
        use_attribute_docstrings=True,
    )

    model: str
    """Base model directory (save_pretrained format: config, weights, tokenizer with a chat template)."""
    train_file: str
    """Training JSONL: {"messages": [{"role": "user", "content": ...}], "answer": ...} per line."""
    grader: dict[str, Any]
    """Grader spec (jobspec.graders: OpenAI's grader types plus regex and math); rewards in [0, 1]."""
    output_dir: str
    """Checkpoints, metrics.jsonl and the final adapter go here; a run resumes from it."""
    validation_file: str | None = None
    """Validation JSONL scored every eval_interval steps (pass@1 greedy and avg@k sampled)."""
    algorithm: AlgorithmName = "sppo"
    """Advantage estimator and critic: sppo (prompt-only critic), grpo (group baseline), ppo (token GAE),
    reinforce (batch-mean baseline, no critic)."""
    critic: CriticKind = REFERENCE_DEFAULTS["critic"]
    """sppo/ppo critic: `separate` (own model + head) or `shared_lora` (policy base + own LoRA + head)."""
    critic_model: str | None = None
    """Model directory of a `separate` critic (may be smaller than the policy); default: the policy model."""
    critic_layers: Count | None = REFERENCE_DEFAULTS["critic_layers"]
    """A `separate` critic built from only the first N decoder layers of its model (a smaller critic from
    the same checkpoint, as the paper pairs a 7B policy with a 1.5B critic); None: all layers."""
    init_adapter: str | None = None
    """A peft LoRA adapter directory the policy starts from and trains further (a warm start from a
    fine-tuned model or checkpoint); its own config sets the adapter's rank, alpha and modules, so
    lora_rank, lora_alpha, lora_dropout and lora_target_modules should be its (jobspec.warmstart). The
    critic starts fresh. None: a new adapter."""
    use_lora: Flag = REFERENCE_DEFAULTS["use_lora"]
    """Train the policy as a LoRA adapter (peft); False trains all policy weights."""
    lora_rank: Count = REFERENCE_DEFAULTS["lora_rank"]
    """LoRA rank r of the policy (and of a shared_lora critic)."""
    lora_alpha: LoraAlpha = REFERENCE_DEFAULTS["lora_alpha"]
    """LoRA scaling numerator (scale = alpha / r)."""
    lora_dropout: NonNegative = REFERENCE_DEFAULTS["lora_dropout"]
    """Dropout on the LoRA input; 0 keeps old log-probs equal to the training forward's."""
    lora_target_modules: list[str] | str = REFERENCE_DEFAULTS["lora_target_modules"]
    """Modules that get LoRA adapters: a list of names or peft's "all-linear"."""
    learning_rate: Positive = REFERENCE_DEFAULTS["learning_rate"]
    """Actor learning rate (constant schedule): 10x the authors' full-parameter 1e-6, for a LoRA adapter;
    set 1e-6 with use_lora false."""
    critic_learning_rate: Positive = REFERENCE_DEFAULTS["critic_learning_rate"]
    """Critic learning rate (constant schedule): the authors' value for a full-parameter (`separate`)
    critic; a `shared_lora` critic trains a LoRA adapter and wants ~10x (5e-5)."""
    weight_decay: NonNegative = REFERENCE_DEFAULTS["weight_decay"]
    """AdamW weight decay for actor and critic."""
    max_grad_norm: Positive = REFERENCE_DEFAULTS["max_grad_norm"]
    """Gradient clipping of actor and critic, each on its own."""
    n_epochs: Count = REFERENCE_DEFAULTS["n_epochs"]
    """Passes over the training file; total steps = n_epochs * ceil(items / batch_size) unless max_steps."""
    max_steps: Count | None = REFERENCE_DEFAULTS["max_steps"]
    """Stop after this many steps (overrides n_epochs)."""
    batch_size: Count = REFERENCE_DEFAULTS["batch_size"]
    """Prompts per step. from_dict's default (the model's or the reference) is samples per step, divided by
    the samples per prompt: every algorithm's default run draws the same number of samples per step."""
    group_size: Count | None = REFERENCE_DEFAULTS["group_size"]
    """Samples per prompt; default from the algorithm (1 for sppo/ppo, 8 for grpo)."""
    compute_multiplier: Positive = REFERENCE_DEFAULTS["compute_multiplier"]
    """OpenAI's `compute_multiplier` (compute spent exploring): scales the samples per prompt, rounded to
    the nearest whole number and at least 1; 2.0 samples twice as many completions of every prompt."""
    ppo_epochs: Count = REFERENCE_DEFAULTS["ppo_epochs"]
    """Passes over each step's samples."""
    minibatch_size: Count = REFERENCE_DEFAULTS["minibatch_size"]
    """Samples per optimizer update inside a PPO epoch."""
    micro_batch_tokens: Count = REFERENCE_DEFAULTS["micro_batch_tokens"]
    """Token budget of one forward/backward (gradient accumulation up to a minibatch); halved on OOM."""
    clip_epsilon: OpenFraction = REFERENCE_DEFAULTS["clip_epsilon"]
    """PPO ratio clip range eps."""
    kl_coef: NonNegative = REFERENCE_DEFAULTS["kl_coef"]
    """Coefficient of a KL penalty to the base policy (off by default)."""
    entropy_coef: NonNegative = REFERENCE_DEFAULTS["entropy_coef"]
    """Entropy bonus (0 as in the paper)."""
    value_clip: OpenFraction = REFERENCE_DEFAULTS["value_clip"]
    """Clip range of the token-level PPO value loss."""
    gae_gamma: Fraction = REFERENCE_DEFAULTS["gae_gamma"]
    """PPO-GAE discount."""
    gae_lambda: Fraction = REFERENCE_DEFAULTS["gae_lambda"]
    """PPO-GAE lambda."""
    grpo_scale_by_std: Flag = REFERENCE_DEFAULTS["grpo_scale_by_std"]
    """GRPO divides by the group's reward std; False is Dr. GRPO."""
    temperature: Temperature = REFERENCE_DEFAULTS["temperature"]
    """Sampling temperature of rollouts (and of avg@k evaluation)."""
    top_p: Probability = REFERENCE_DEFAULTS["top_p"]
    """Nucleus sampling threshold."""
    max_response_tokens: Count = REFERENCE_DEFAULTS["max_response_tokens"]
    """Most new tokens per response; the longest training (and evaluated validation) prompt plus this must
    fit the model's context, checked before the model loads (`ConfigError` naming the field, with the line
    and what would fit)."""
    eval_interval: EvalInterval = REFERENCE_DEFAULTS["eval_interval"]
    """Evaluate every this many steps, after a step-0 baseline and at the end; "auto": total_steps // 5."""
    eval_samples: Count = REFERENCE_DEFAULTS["eval_samples"]
    """k of avg@k."""
    eval_max_items: Count | None = REFERENCE_DEFAULTS["eval_max_items"]
    """Score only the first N validation items (None: all)."""
    pass_threshold: Probability = REFERENCE_DEFAULTS["pass_threshold"]
    """A completion passes (pass@1, avg@k, rollout/accuracy) when its reward is at least this; the mean
    reward is reported beside them (eval/reward_mean, rollout/reward_mean)."""
    checkpoint_interval: Count = REFERENCE_DEFAULTS["checkpoint_interval"]
    """Write a checkpoint every this many steps, at every evaluation and at the end."""
    keep_checkpoints: Count = REFERENCE_DEFAULTS["keep_checkpoints"]
    """Keep the last K checkpoints, plus the best one by validation score."""
    model_selection: ModelSelection = REFERENCE_DEFAULTS["model_selection"]
    """The run's model (final/): "best", the checkpoint with the highest validation pass@1 (the earlier step
    on a tie; the base model's step-0 score is not a candidate), or "last", the last step. Without a
    validation file it is "last"."""
    early_stopping_patience: Count | None = REFERENCE_DEFAULTS["early_stopping_patience"]
    """Stop when validation pass@1 has not improved for this many evaluations in a row (the base model's
    score counts); the run completes there, its model chosen by model_selection. None: train every step."""
    seed: int = 0
    """Seeds data order, sampling and initialisation; CPU runs are reproducible."""
    device: str = "auto"
    """"auto" (CUDA when available), "cpu" or "cuda[:i]"."""
    dtype: DType = REFERENCE_DEFAULTS["dtype"]
    """"auto" (bfloat16 on a CUDA GPU that supports it, else float32), "float32" or "bfloat16": a LoRA
    policy's frozen base is stored in it and every forward computes in it (autocast); trained weights,
    optimizer state, log-probs, advantages and losses stay float32 (docs/engine.md, "Precision")."""
    gradient_checkpointing: GradientCheckpointing = REFERENCE_DEFAULTS["gradient_checkpointing"]
    """Recompute each decoder layer's activations in the backward instead of keeping them: true, false,
    or "auto" (on for models of 300M parameters and more, decided per model: policy and separate critic)."""
    attn_implementation: AttnImplementation = REFERENCE_DEFAULTS["attn_implementation"]
    """Attention kernel: "sdpa", "eager", "flash_attention_2" (the flash-attn package, CUDA, bfloat16) or
    "auto" (flash_attention_2 where it can run, else sdpa)."""
    n_devices: Count = 1
    """Processes, one device each, that train the run together (torchrun, data-parallel: a LoRA policy
    replicated, a fully fine-tuned one sharded with FSDP2; see docs/multi-device.md); batch_size and
    minibatch_size must be multiples of it."""
    rollout_backend: RolloutBackend = "hf"
    """What samples the rollouts: "hf" (transformers `generate` on the training policy) or "vllm" (a vLLM
    engine on the same GPU that hot-swaps the policy's LoRA adapter after each update; the `vllm` extra,
    CUDA, use_lora and one device). Evaluations always use "hf"."""
    rollout_gpu_memory_utilization: OpenFraction = 0.3
    """With rollout_backend vllm: the share of the GPU's memory the engine takes (weights and KV cache);
    the rest is the trainer's."""
    health_entropy_floor: float = 0.01
    """Warn when the mean token entropy falls below this (entropy collapse)."""
    grading: dict[str, Any] = Field(default_factory=dict)
    """Where judge models and embeddings are reached and how Python graders are sandboxed
    (grading.build.GradingContext.from_dict; the worker fills it from the service's settings)."""
    metrics: dict[str, Any] = Field(default_factory=dict)
    """Free-form labels copied into metrics.jsonl's header (job id, tags)."""
    samples_kept: int = 4
    """Completions reported per step (samples.py: the best, the worst and the first of the batch); 0: none."""
    sample_max_chars: int = 2000
    """A kept prompt or completion longer than this is cut to it (and marked truncated)."""

    @property
    def samples_per_prompt(self) -> int:
        return samples_per_prompt(self.algorithm, self.group_size, self.compute_multiplier)

    @field_validator("grader")
    @classmethod
    def _grader_spec(cls, grader: dict[str, Any]) -> dict[str, Any]:
        if "type" not in grader:
            raise PydanticCustomError("grader_spec", "a grader spec is an object with a 'type'")
        return grader

    @field_validator("model_selection")
    @classmethod
    def _selection(cls, asked: str, info: ValidationInfo) -> str:
        return model_selection(asked, info.data.get("validation_file") is not None)

    @model_validator(mode="after")
    def _fields_agree(self) -> Self:
        refusal = _disagreement(self)
        if refusal is not None:  # an error of the whole model has no field: the refusal names it
            raise PydanticCustomError("fields_disagree", refusal.message, {"param": refusal.param})
        return self

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunConfig":
        """Reference defaults <- the model's sppo_defaults.json <- `values`; ConfigError naming the first
        field that is missing, unknown, out of its limits or at odds with another."""
        model = values.get("model")
        resolved = resolve_defaults(model_defaults(model) if isinstance(model, str) else {}, values)
        # a model's defaults may name more than the engine reads; `values` may not
        merged = {k: v for k, v in resolved.items() if k in cls.model_fields or k in values}
        try:
            return cls(**merged)
        except ValidationError as exc:
            raise _config_error(exc) from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> "RunConfig":
        try:
            values = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read run config {path}: {exc}") from exc
        if not isinstance(values, dict):
            raise ConfigError(f"{path} must hold a mapping of field names to values")
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def model_defaults(model_dir: str | Path) -> dict[str, Any]:
    """The recommended hyperparameters a model directory carries in sppo_defaults.json ({} if none)."""
    path = Path(model_dir) / DEFAULTS_FILE
    if not path.exists():
        return {}
    defaults = json.loads(path.read_text())
    if not isinstance(defaults, dict):
        raise ConfigError(f"{path} must hold a JSON object", "model")
    return defaults


def _disagreement(config: RunConfig) -> Refusal | None:
    """The first rule joining fields that `config` breaks; None when it keeps them all. The rules joining
    hyperparameters are the spec's (the API refuses the same at job creation); those of the rollout backend
    are the engine's alone."""
    c = config
    refusals = (
        hyperparameter_refusal(dict(c), has_validation_file=c.validation_file is not None),
        # the vLLM engine takes the policy as a LoRA adapter, on one device
        unless(c.rollout_backend != "vllm" or c.use_lora, "rollout_backend",
               "The vllm rollout backend needs use_lora: true."),
        unless(c.rollout_backend != "vllm" or c.n_devices == 1, "rollout_backend",
               "The vllm rollout backend runs on one device."),
    )  # fmt: skip
    return next((refusal for refusal in refusals if refusal is not None), None)


def _config_error(exc: ValidationError) -> ConfigError:
    """The first failing field as a ConfigError, with every message pydantic gave for it (each member of a
    union gives one)."""
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    param = _param(first)
    if first["type"] == "fields_disagree":
        return ConfigError(first["msg"], param)
    if first["type"] == "missing":
        return ConfigError(f"{param} is required", param)
    if first["type"] == "extra_forbidden":
        return ConfigError(f"{param} is no run configuration field", param)
    messages = "; ".join(dict.fromkeys(error["msg"] for error in errors if _param(error) == param))
    return ConfigError(f"Invalid value for '{param}': {messages}.", param)


def _param(error: ErrorDetails) -> str:
    return str(error["loc"][0]) if error["loc"] else str(error.get("ctx", {})["param"])
