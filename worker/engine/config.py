"""One typed configuration for a training run, loadable from YAML and validated with clear messages.

Defaults are jobspec.hyperparameters.REFERENCE_DEFAULTS: the reference values for real (1.5B-7B) models
from ALGORITHMS.md, with the actor learning rate raised 10x for LoRA (docs/engine.md gives the sources). A
model directory may carry `sppo_defaults.json` (the fixtures do: tiny CPU models need far larger learning
rates), with per-algorithm values under `algorithms`; those override the reference defaults, and the run's
own values override both (jobspec.hyperparameters.resolve_defaults, the rule the API shows jobs with).
"""

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from jobspec.algorithms import ALGORITHM_NAMES, CRITIC_KINDS
from jobspec.compute import ATTN_IMPLEMENTATIONS, DTYPES
from jobspec.hyperparameters import DEFAULTS_FILE, REFERENCE_DEFAULTS, resolve_defaults, samples_per_prompt
from jobspec.selection import MODEL_SELECTIONS, model_selection
from worker.engine.errors import ConfigError

ROLLOUT_BACKENDS = ("hf", "vllm")


@dataclass
class RunConfig:
    """Everything one training run needs. Paths may be relative to the working directory."""

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
    algorithm: str = "sppo"
    """Advantage estimator and critic: sppo (prompt-only critic), grpo (group baseline), ppo (token GAE),
    reinforce (batch-mean baseline, no critic)."""
    critic: str = REFERENCE_DEFAULTS["critic"]
    """sppo/ppo critic: `separate` (own model + head) or `shared_lora` (policy base + own LoRA + head)."""
    critic_model: str | None = None
    """Model directory of a `separate` critic (may be smaller than the policy); default: the policy model."""
    critic_layers: int | None = REFERENCE_DEFAULTS["critic_layers"]
    """A `separate` critic built from only the first N decoder layers of its model (a smaller critic from
    the same checkpoint, as the paper pairs a 7B policy with a 1.5B critic); None: all layers."""
    init_adapter: str | None = None
    """A peft LoRA adapter directory the policy starts from and trains further (a warm start from a
    fine-tuned model or checkpoint); its own config sets the adapter's rank, alpha and modules, so
    lora_rank, lora_alpha, lora_dropout and lora_target_modules should be its (jobspec.warmstart). The
    critic starts fresh. None: a new adapter."""
    use_lora: bool = REFERENCE_DEFAULTS["use_lora"]
    """Train the policy as a LoRA adapter (peft); False trains all policy weights."""
    lora_rank: int = REFERENCE_DEFAULTS["lora_rank"]
    """LoRA rank r of the policy (and of a shared_lora critic)."""
    lora_alpha: int = REFERENCE_DEFAULTS["lora_alpha"]
    """LoRA scaling numerator (scale = alpha / r)."""
    lora_dropout: float = REFERENCE_DEFAULTS["lora_dropout"]
    """Dropout on the LoRA input; 0 keeps old log-probs equal to the training forward's."""
    lora_target_modules: list[str] | str = REFERENCE_DEFAULTS["lora_target_modules"]
    """Modules that get LoRA adapters: a list of names or peft's "all-linear"."""
    learning_rate: float = REFERENCE_DEFAULTS["learning_rate"]
    """Actor learning rate (constant schedule): 10x the authors' full-parameter 1e-6, for a LoRA adapter;
    set 1e-6 with use_lora false."""
    critic_learning_rate: float = REFERENCE_DEFAULTS["critic_learning_rate"]
    """Critic learning rate (constant schedule): the authors' value for a full-parameter (`separate`)
    critic; a `shared_lora` critic trains a LoRA adapter and wants ~10x (5e-5)."""
    weight_decay: float = REFERENCE_DEFAULTS["weight_decay"]
    """AdamW weight decay for actor and critic."""
    max_grad_norm: float = REFERENCE_DEFAULTS["max_grad_norm"]
    """Gradient clipping of actor and critic, each on its own."""
    n_epochs: int = REFERENCE_DEFAULTS["n_epochs"]
    """Passes over the training file; total steps = n_epochs * ceil(items / batch_size) unless max_steps."""
    max_steps: int | None = REFERENCE_DEFAULTS["max_steps"]
    """Stop after this many steps (overrides n_epochs)."""
    batch_size: int = REFERENCE_DEFAULTS["batch_size"]
    """Prompts per step. from_dict's default (the model's or the reference) is samples per step, divided by
    the samples per prompt: every algorithm's default run draws the same number of samples per step."""
    group_size: int | None = REFERENCE_DEFAULTS["group_size"]
    """Samples per prompt; default from the algorithm (1 for sppo/ppo, 8 for grpo)."""
    compute_multiplier: float = REFERENCE_DEFAULTS["compute_multiplier"]
    """OpenAI's `compute_multiplier` (compute spent exploring): scales the samples per prompt, rounded to
    the nearest whole number and at least 1; 2.0 samples twice as many completions of every prompt."""
    ppo_epochs: int = REFERENCE_DEFAULTS["ppo_epochs"]
    """Passes over each step's samples."""
    minibatch_size: int = REFERENCE_DEFAULTS["minibatch_size"]
    """Samples per optimizer update inside a PPO epoch."""
    micro_batch_tokens: int = REFERENCE_DEFAULTS["micro_batch_tokens"]
    """Token budget of one forward/backward (gradient accumulation up to a minibatch); halved on OOM."""
    clip_epsilon: float = REFERENCE_DEFAULTS["clip_epsilon"]
    """PPO ratio clip range eps."""
    kl_coef: float = REFERENCE_DEFAULTS["kl_coef"]
    """Coefficient of a KL penalty to the base policy (off by default)."""
    entropy_coef: float = REFERENCE_DEFAULTS["entropy_coef"]
    """Entropy bonus (0 as in the paper)."""
    value_clip: float = REFERENCE_DEFAULTS["value_clip"]
    """Clip range of the token-level PPO value loss."""
    gae_gamma: float = REFERENCE_DEFAULTS["gae_gamma"]
    """PPO-GAE discount."""
    gae_lambda: float = REFERENCE_DEFAULTS["gae_lambda"]
    """PPO-GAE lambda."""
    grpo_scale_by_std: bool = REFERENCE_DEFAULTS["grpo_scale_by_std"]
    """GRPO divides by the group's reward std; False is Dr. GRPO."""
    temperature: float = REFERENCE_DEFAULTS["temperature"]
    """Sampling temperature of rollouts (and of avg@k evaluation)."""
    top_p: float = REFERENCE_DEFAULTS["top_p"]
    """Nucleus sampling threshold."""
    max_response_tokens: int = REFERENCE_DEFAULTS["max_response_tokens"]
    """Most new tokens per response; the longest training (and evaluated validation) prompt plus this must
    fit the model's context, checked before the model loads (`ConfigError` naming the field, with the line
    and what would fit)."""
    eval_interval: int | str = REFERENCE_DEFAULTS["eval_interval"]
    """Evaluate every this many steps, after a step-0 baseline and at the end; "auto": total_steps // 5."""
    eval_samples: int = REFERENCE_DEFAULTS["eval_samples"]
    """k of avg@k."""
    eval_max_items: int | None = REFERENCE_DEFAULTS["eval_max_items"]
    """Score only the first N validation items (None: all)."""
    pass_threshold: float = REFERENCE_DEFAULTS["pass_threshold"]
    """A completion passes (pass@1, avg@k, rollout/accuracy) when its reward is at least this; the mean
    reward is reported beside them (eval/reward_mean, rollout/reward_mean)."""
    checkpoint_interval: int = REFERENCE_DEFAULTS["checkpoint_interval"]
    """Write a checkpoint every this many steps, at every evaluation and at the end."""
    keep_checkpoints: int = REFERENCE_DEFAULTS["keep_checkpoints"]
    """Keep the last K checkpoints, plus the best one by validation score."""
    model_selection: str = REFERENCE_DEFAULTS["model_selection"]
    """The run's model (final/): "best", the checkpoint with the highest validation pass@1 (the earlier step
    on a tie; the base model's step-0 score is not a candidate), or "last", the last step. Without a
    validation file it is "last"."""
    early_stopping_patience: int | None = REFERENCE_DEFAULTS["early_stopping_patience"]
    """Stop when validation pass@1 has not improved for this many evaluations in a row (the base model's
    score counts); the run completes there, its model chosen by model_selection. None: train every step."""
    seed: int = 0
    """Seeds data order, sampling and initialisation; CPU runs are reproducible."""
    device: str = "auto"
    """"auto" (CUDA when available), "cpu" or "cuda[:i]"."""
    dtype: str = REFERENCE_DEFAULTS["dtype"]
    """"auto" (bfloat16 on a CUDA GPU that supports it, else float32), "float32" or "bfloat16": a LoRA
    policy's frozen base is stored in it and every forward computes in it (autocast); trained weights,
    optimizer state, log-probs, advantages and losses stay float32 (docs/engine.md, "Precision")."""
    gradient_checkpointing: bool | str = REFERENCE_DEFAULTS["gradient_checkpointing"]
    """Recompute each decoder layer's activations in the backward instead of keeping them: true, false,
    or "auto" (on for models of 300M parameters and more, decided per model: policy and separate critic)."""
    attn_implementation: str = REFERENCE_DEFAULTS["attn_implementation"]
    """Attention kernel: "sdpa", "eager", "flash_attention_2" (the flash-attn package, CUDA, bfloat16) or
    "auto" (flash_attention_2 where it can run, else sdpa)."""
    n_devices: int = 1
    """Processes, one device each, that train the run together (torchrun, data-parallel: a LoRA policy
    replicated, a fully fine-tuned one sharded with FSDP2; see docs/multi-device.md); batch_size and
    minibatch_size must be multiples of it."""
    rollout_backend: str = "hf"
    """What samples the rollouts: "hf" (transformers `generate` on the training policy) or "vllm" (a vLLM
    engine on the same GPU that hot-swaps the policy's LoRA adapter after each update; the `vllm` extra,
    CUDA, use_lora and one device). Evaluations always use "hf"."""
    rollout_gpu_memory_utilization: float = 0.3
    """With rollout_backend vllm: the share of the GPU's memory the engine takes (weights and KV cache);
    the rest is the trainer's."""
    health_entropy_floor: float = 0.01
    """Warn when the mean token entropy falls below this (entropy collapse)."""
    grading: dict[str, Any] = field(default_factory=dict)
    """Where judge models and embeddings are reached and how Python graders are sandboxed
    (grading.build.GradingContext.from_dict; the worker fills it from the service's settings)."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """Free-form labels copied into metrics.jsonl's header (job id, tags)."""
    samples_kept: int = 4
    """Completions reported per step (samples.py: the best, the worst and the first of the batch); 0: none."""
    sample_max_chars: int = 2000
    """A kept prompt or completion longer than this is cut to it (and marked truncated)."""

    def __post_init__(self) -> None:
        self.model_selection = model_selection(self.model_selection, self.validation_file is not None)
        self.validate()

    @property
    def samples_per_prompt(self) -> int:
        return samples_per_prompt(self.algorithm, self.group_size, self.compute_multiplier)

    def validate(self) -> None:
        """Raise ConfigError naming the first field that is out of range."""
        _check(self.algorithm in ALGORITHM_NAMES, f"must be one of {', '.join(ALGORITHM_NAMES)}", "algorithm")
        _check(self.critic in CRITIC_KINDS, f"must be one of {', '.join(CRITIC_KINDS)}", "critic")
        selections = ", ".join(MODEL_SELECTIONS)
        _check(self.model_selection in MODEL_SELECTIONS, f"must be one of {selections}", "model_selection")
        _check(
            self.early_stopping_patience is None or self.validation_file is not None,
            "needs a validation_file: early stopping watches the validation score",
            "early_stopping_patience",
        )
        _check(isinstance(self.grader, dict) and "type" in self.grader, "must be a grader spec", "grader")
        _check(
            self.critic != "shared_lora" or self.use_lora,
            "a shared_lora critic needs a frozen base: set use_lora to true",
            "critic",
        )
        _check(
            self.init_adapter is None or self.use_lora,
            "is a LoRA adapter, which only a use_lora policy can continue",
            "init_adapter",
        )
        _check(
            self.critic_layers is None or self.critic == "separate",
            "only a separate critic can have fewer layers (a shared_lora critic is the policy's base)",
            "critic_layers",
        )
        self._validate_ranges()
        self._validate_precision()
        self._validate_rollout_and_devices()

    def _validate_ranges(self) -> None:
        for name in (
            "learning_rate", "critic_learning_rate", "temperature", "lora_alpha", "max_grad_norm",
            "compute_multiplier",
        ):  # fmt: skip
            _check(getattr(self, name) > 0, "must be > 0", name)
        for name in ("weight_decay", "kl_coef", "entropy_coef", "lora_dropout"):
            _check(getattr(self, name) >= 0, "must be >= 0", name)
        for name in ("clip_epsilon", "value_clip"):
            _check(0 < getattr(self, name) < 1, "must be in (0, 1)", name)
        for name in ("gae_gamma", "gae_lambda"):
            _check(0 <= getattr(self, name) <= 1, "must be in [0, 1]", name)
        _check(0 < self.top_p <= 1, "must be in (0, 1]", "top_p")
        _check(0 < self.pass_threshold <= 1, "must be in (0, 1]", "pass_threshold")
        for name in (
            "n_epochs", "batch_size", "ppo_epochs", "minibatch_size", "micro_batch_tokens",
            "max_response_tokens", "eval_samples", "checkpoint_interval",
            "keep_checkpoints", "lora_rank",
        ):  # fmt: skip
            value = getattr(self, name)
            _check(isinstance(value, int) and value >= 1, "must be an integer >= 1", name)
        _check(
            self.eval_interval == "auto" or (isinstance(self.eval_interval, int) and self.eval_interval >= 1),
            'must be "auto" or an integer >= 1',
            "eval_interval",
        )
        for name in ("max_steps", "group_size", "eval_max_items", "critic_layers", "early_stopping_patience"):
            value = getattr(self, name)
            _check(value is None or (isinstance(value, int) and value >= 1), "must be null or >= 1", name)

    def _validate_precision(self) -> None:
        _check(self.dtype in DTYPES, f"must be one of {', '.join(DTYPES)}", "dtype")
        kernels = ", ".join(ATTN_IMPLEMENTATIONS)
        _check(
            self.attn_implementation in ATTN_IMPLEMENTATIONS,
            f"must be one of {kernels}",
            "attn_implementation",
        )
        checkpointing = self.gradient_checkpointing
        _check(
            isinstance(checkpointing, bool) or checkpointing == "auto",
            'must be true, false or "auto"',
            "gradient_checkpointing",
        )

    def _validate_rollout_and_devices(self) -> None:
        backends = ", ".join(ROLLOUT_BACKENDS)
        _check(self.rollout_backend in ROLLOUT_BACKENDS, f"must be one of {backends}", "rollout_backend")
        _check(
            0 < self.rollout_gpu_memory_utilization < 1, "must be in (0, 1)", "rollout_gpu_memory_utilization"
        )
        # the reference of the KL penalty is the frozen base, i.e. the policy with its adapter switched off
        _check(self.kl_coef == 0 or self.use_lora, "a KL penalty needs use_lora: true", "kl_coef")
        if self.rollout_backend == "vllm":  # the engine takes the policy as a LoRA adapter, on one device
            _check(self.use_lora, "the vllm rollout backend needs use_lora: true", "rollout_backend")
            _check(self.n_devices == 1, "the vllm rollout backend runs on one device", "rollout_backend")
        n_devices = self.n_devices
        _check(isinstance(n_devices, int) and n_devices >= 1, "must be an integer >= 1", "n_devices")
        for name in ("batch_size", "minibatch_size"):  # every rank takes an equal share of both
            _check(getattr(self, name) % self.n_devices == 0, "must be a multiple of n_devices", name)
        _check(
            self.algorithm != "grpo" or self.samples_per_prompt >= 2,
            "grpo needs at least 2 samples per prompt to form a group baseline",
            "group_size" if self.compute_multiplier == 1 else "compute_multiplier",
        )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunConfig":
        """Reference defaults <- the model's sppo_defaults.json <- `values`. Unknown keys are errors."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown field(s): {', '.join(unknown)}", unknown[0])
        for required in ("model", "train_file", "grader", "output_dir"):
            if required not in values:
                raise ConfigError("is required", required)
        merged = {
            k: v for k, v in resolve_defaults(model_defaults(values["model"]), values).items() if k in known
        }
        if merged.get("critic") == "shared_lora" and "critic_layers" not in values:
            merged.pop("critic_layers", None)  # a model's smaller-critic default is for a separate critic
        try:
            return cls(**merged)
        except TypeError as exc:
            raise ConfigError(f"invalid configuration: {exc}") from exc

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
        return asdict(self)

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


def _check(ok: bool, message: str, param: str) -> None:
    if not ok:
        raise ConfigError(f"{param} {message}", param)
