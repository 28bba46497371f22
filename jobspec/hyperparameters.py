"""Hyperparameter defaults and how a run's values are resolved: written once for the API and the engine.

A value comes from the job, else from the model's `sppo_defaults.json` (its `algorithms.<name>` section over
its top level), else from REFERENCE_DEFAULTS. One rule keeps the algorithms comparable: a default
`batch_size` (from the model or the reference) is the samples per step, so an algorithm that draws N samples
per prompt (GRPO: 8) takes batch_size / N prompts per step unless the job sets `batch_size` itself; every
algorithm's default job then costs the same number of samples per step.
"""

import math
from collections.abc import Mapping
from typing import Any, Final

from jobspec.selection import model_selection

METHOD: Final = "method.reinforcement"
"""Where a job's algorithm, grader and hyperparameters are in its request."""
HYPERPARAMETERS: Final = f"{METHOD}.hyperparameters"
"""Where a job's hyperparameters are in its request: the prefix of every error's `param` about one."""
DEFAULTS_FILE: Final = "sppo_defaults.json"
ALGORITHMS_KEY: Final = "algorithms"
"""The key of a model's per-algorithm defaults: {"algorithms": {"grpo": {"learning_rate": 1e-4}}}."""

DEFAULT_SAMPLES_PER_PROMPT: Final[Mapping[str, int]] = {"sppo": 1, "grpo": 8, "ppo": 1, "reinforce": 1}

REFERENCE_DEFAULTS: Final[Mapping[str, Any]] = {
    # the reference values for real (1.5B-7B) models from ALGORITHMS.md, the actor learning rate raised 10x
    # for LoRA (docs/engine.md gives the sources)
    "critic": "separate",
    "critic_layers": None,
    "use_lora": True,
    "lora_rank": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.0,
    "lora_target_modules": "all-linear",
    "learning_rate": 1e-5,
    "critic_learning_rate": 5e-6,
    "weight_decay": 0.01,
    "max_grad_norm": 1.0,
    "n_epochs": 1,
    "max_steps": None,
    "batch_size": 256,
    "group_size": None,
    "compute_multiplier": 1.0,
    "ppo_epochs": 1,
    "minibatch_size": 128,
    "micro_batch_tokens": 65536,
    "clip_epsilon": 0.2,
    "kl_coef": 0.0,
    "entropy_coef": 0.0,
    "value_clip": 0.2,
    "gae_gamma": 1.0,
    "gae_lambda": 0.95,
    "grpo_scale_by_std": True,
    "temperature": 0.6,
    "top_p": 1.0,
    "max_response_tokens": 8192,
    "eval_interval": "auto",
    "eval_samples": 4,
    "eval_max_items": None,
    "pass_threshold": 1.0,
    "checkpoint_interval": 10,
    "keep_checkpoints": 3,
    "model_selection": "best",
    "early_stopping_patience": None,
    "dtype": "auto",
    "gradient_checkpointing": "auto",
    "attn_implementation": "auto",
    "n_devices": 1,
}

JOB_FIELDS: Final = (
    "n_epochs", "batch_size", "eval_interval", "eval_samples", "max_response_tokens", "temperature", "top_p",
    "critic", "group_size", "ppo_epochs", "minibatch_size", "clip_epsilon", "kl_coef", "gae_gamma",
    "gae_lambda", "grpo_scale_by_std", "lora_rank", "lora_alpha", "checkpoint_interval", "n_devices",
    "critic_layers", "pass_threshold", "compute_multiplier", "model_selection", "early_stopping_patience",
    "dtype", "gradient_checkpointing", "attn_implementation",
)  # fmt: skip
"""API hyperparameters that are engine fields of the same name and meaning."""
HINTS: Final[Mapping[str, str]] = {
    "learning_rate": "Use 'learning_rate_multiplier': a factor on the model's default learning rate"
    " (GET /v1/models lists the defaults).",
    "critic_learning_rate": "Use 'critic_learning_rate_multiplier': a factor on the model's default critic"
    " learning rate.",
    "epochs": "Use 'n_epochs'.",
    "num_epochs": "Use 'n_epochs'.",
    "max_tokens": "Use 'max_response_tokens'.",
    "num_generations": "Use 'group_size' (samples per prompt).",
}
"""What a user who names a hyperparameter as other trainers do is told to use instead."""
REASONING_EFFORT_TOKENS: Final[Mapping[str, int]] = {"low": 1024, "medium": 4096, "high": 16384}
"""max_response_tokens for OpenAI's `reasoning_effort` when the job does not set max_response_tokens."""


def request_param(param: str | None) -> str | None:
    """Where a job's request holds an engine field: a hyperparameter under HYPERPARAMETERS, the grader (and
    its parts, `grader.graders.x`) under the method; any other name (`training_file`, `model`) as it is."""
    if param is not None and param.split(".", 1)[0] == "grader":
        return f"{METHOD}.{param}"
    return f"{HYPERPARAMETERS}.{param}" if param in JOB_FIELDS else param


def samples_per_prompt(algorithm: str, group_size: int | None, compute_multiplier: float = 1.0) -> int:
    """The job's group_size, else the algorithm's default (8 for grpo, 1 for the others), times OpenAI's
    `compute_multiplier`, rounded half up (1 x 2.5 is 3, not 2) and at least 1."""
    group = group_size if group_size is not None else DEFAULT_SAMPLES_PER_PROMPT.get(algorithm, 1)
    return max(1, math.floor(group * compute_multiplier + 0.5))


def model_defaults_for(model_defaults: Mapping[str, Any], algorithm: str) -> dict[str, Any]:
    """A model's defaults for one algorithm: its top-level values with `algorithms.<algorithm>` on top."""
    merged = {k: v for k, v in model_defaults.items() if k != ALGORITHMS_KEY}
    sections = model_defaults.get(ALGORITHMS_KEY)
    if isinstance(sections, Mapping) and isinstance(sections.get(algorithm), Mapping):
        merged.update(sections[algorithm])
    return merged


def resolve_defaults(model_defaults: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """REFERENCE_DEFAULTS <- the model's defaults for `values["algorithm"]` <- `values`.

    Without a `batch_size` in `values`, the default batch (samples per step) is divided by the samples per
    prompt, rounded down to a multiple of `n_devices` (at least one prompt per device). A `shared_lora`
    critic takes no default `critic_layers`: it is the policy's base, whole.
    """
    algorithm = str(values.get("algorithm", "sppo"))
    merged = {**REFERENCE_DEFAULTS, **model_defaults_for(model_defaults, algorithm), **values}
    if merged["critic"] == "shared_lora" and "critic_layers" not in values:
        merged["critic_layers"] = None  # a model's smaller-critic default is for a separate critic
    if values.get("batch_size") is None:
        per_prompt = samples_per_prompt(algorithm, merged.get("group_size"), merged["compute_multiplier"])
        devices = merged.get("n_devices") or 1
        merged["batch_size"] = max(devices, int(merged["batch_size"]) // per_prompt // devices * devices)
    return merged


def grader_pass_threshold(grader: Mapping[str, Any]) -> float:
    """The pass threshold a grader names itself (OpenAI's `pass_threshold`), else 1.0: full credit."""
    return float(grader.get("pass_threshold") or 1.0)


def _given(hyper: Mapping[str, Any], name: str) -> Any:
    value = hyper.get(name)
    return None if value == "auto" else value


def given_max_response_tokens(hyper: Mapping[str, Any]) -> int | None:
    """The response budget a job sets itself: its `max_response_tokens`, else its `reasoning_effort`'s
    (low/medium/high; "default" and none leave it to the defaults: None)."""
    given = _given(hyper, "max_response_tokens")
    if given is not None:
        return int(given)
    return REASONING_EFFORT_TOKENS.get(str(hyper.get("reasoning_effort")))


def _multiplier(hyper: Mapping[str, Any], rate: str) -> float:
    return float(_given(hyper, f"{rate}_multiplier") or 1)


def job_values(
    hyper: Mapping[str, Any], *, algorithm: str, grader: Mapping[str, Any], model_defaults: Mapping[str, Any]
) -> dict[str, Any]:
    """The engine fields a job's hyperparameters set ("auto" and absent values left to the defaults); the
    learning rates are the model's defaults for the algorithm times the job's multipliers (OpenAI's
    `learning_rate_multiplier`)."""
    values = {name: _given(hyper, name) for name in JOB_FIELDS if _given(hyper, name) is not None}
    values.setdefault("pass_threshold", grader_pass_threshold(grader))
    budget = given_max_response_tokens(hyper)
    if budget is not None:
        values["max_response_tokens"] = budget
    defaults = resolve_defaults(model_defaults, {"algorithm": algorithm})
    values["learning_rate"] = float(defaults["learning_rate"]) * float(
        _given(hyper, "learning_rate_multiplier") or 1
    )
    values["critic_learning_rate"] = float(defaults["critic_learning_rate"]) * float(
        _given(hyper, "critic_learning_rate_multiplier") or 1
    )
    return values


def run_values(
    hyper: Mapping[str, Any], *, algorithm: str, grader: Mapping[str, Any], model_defaults: Mapping[str, Any]
) -> dict[str, Any]:
    """Every engine field a job's hyperparameters resolve to (resolve_defaults over job_values): what the
    rules joining them (jobspec.limits.hyperparameter_refusal) are checked on."""
    values = job_values(hyper, algorithm=algorithm, grader=grader, model_defaults=model_defaults)
    return resolve_defaults(model_defaults, {"algorithm": algorithm, **values})


def resolved_hyperparameters(
    hyper: Mapping[str, Any],
    *,
    algorithm: str,
    grader: Mapping[str, Any],
    model_defaults: Mapping[str, Any],
    has_validation_file: bool,
) -> dict[str, Any]:
    """What a job shows as its hyperparameters from the moment it is created: every API hyperparameter as
    the run will use it, the samples per step, and the learning rates with their multipliers."""
    merged = run_values(hyper, algorithm=algorithm, grader=grader, model_defaults=model_defaults)
    per_prompt = samples_per_prompt(algorithm, merged["group_size"], merged["compute_multiplier"])
    resolved = {name: merged[name] for name in JOB_FIELDS}
    resolved["model_selection"] = model_selection(merged["model_selection"], has_validation_file)
    resolved.update(
        group_size=per_prompt,
        samples_per_step=int(merged["batch_size"]) * per_prompt,
        learning_rate_multiplier=_multiplier(hyper, "learning_rate"),
        critic_learning_rate_multiplier=_multiplier(hyper, "critic_learning_rate"),
        learning_rate=merged["learning_rate"],
        critic_learning_rate=merged["critic_learning_rate"],
    )
    if hyper.get("reasoning_effort") is not None:
        resolved["reasoning_effort"] = hyper["reasoning_effort"]
    return resolved
