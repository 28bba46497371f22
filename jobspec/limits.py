"""The limits of every hyperparameter, written once: the API's request schema and the engine's RunConfig type
their fields with these, so a value one side accepts the other runs.

These are the limits of what can run. The API caps some further (at most 100 epochs, 64 devices, ...):
those caps bound what one tenant may ask of a shared service and live in its schema alone. The rules that
join hyperparameters are `hyperparameter_refusal`'s, which the API checks at job creation and the engine's
config again; the engine's config keeps only the rules about how it runs (its rollout backend).
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field, Strict

from jobspec.hyperparameters import samples_per_prompt

Count = Annotated[int, Field(ge=1)]
"""A whole number of things (steps, prompts, samples, layers, devices): at least one."""
Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
OpenFraction = Annotated[float, Field(gt=0, lt=1)]
"""In (0, 1): a clip range or a memory share."""
Fraction = Annotated[float, Field(ge=0, le=1)]
"""In [0, 1]: a discount or GAE's lambda."""
Probability = Annotated[float, Field(gt=0, le=1)]
"""In (0, 1]: a nucleus or a reward threshold; 0 would keep nothing."""
Flag = Annotated[bool, Strict()]
"""true or false only: 1 or "yes" would otherwise read as true."""

Temperature = Annotated[float, Field(ge=0.01)]
"""Below 0.01 the sampling distribution underflows (5e-324 failed a job at its first step)."""
LoraAlpha = Annotated[float, Field(gt=0, le=4096)]
"""1e308 overflowed the LoRA scaling (alpha / r)."""
EvalInterval = Count | Literal["auto"]
"""Steps between evaluations; "auto": a fifth of the run."""
GradientCheckpointing = Flag | Literal["auto"]
""""auto": on for models of 300M parameters and more."""


@dataclass(frozen=True)
class Refusal:
    """A value refused by a rule: the field to change (its engine name) and why."""

    param: str
    message: str


def device_share(values: Mapping[str, Any], n_devices: int) -> Refusal | None:
    """Every device takes an equal share of a step's prompts and of a minibatch's samples, so `batch_size`
    and `minibatch_size` are multiples of `n_devices`; a value not yet resolved ("auto", None) passes."""
    for name in ("batch_size", "minibatch_size"):
        value = values.get(name)
        if isinstance(value, int) and value % n_devices:
            shares = f"{name} {value} cannot be shared equally by {n_devices} devices"
            return Refusal(name, f"{shares}; use a multiple of n_devices.")
    return None


def early_stopping(patience: int | None, has_validation_file: bool) -> Refusal | None:
    """Early stopping watches the validation score, so it needs a validation file."""
    if patience is None or has_validation_file:
        return None
    return Refusal(
        "early_stopping_patience",
        "early_stopping_patience stops a run whose validation score no longer improves, and the job has "
        "no validation_file: add one, or leave early_stopping_patience out.",
    )


def hyperparameter_refusal(values: Mapping[str, Any], *, has_validation_file: bool) -> Refusal | None:
    """The first rule joining hyperparameters that `values` break; None when they keep them all.

    `values` are engine fields as the run will use them (jobspec.hyperparameters.resolve_defaults: the job's
    over the model's defaults over the reference defaults), so a conflict that a model's defaults bring
    (`use_lora: false`) is refused at creation like one the job asks for.
    """
    v = values
    use_lora = v["use_lora"]
    grpo_samples = samples_per_prompt("grpo", v["group_size"], v["compute_multiplier"])
    refusals = (
        early_stopping(v["early_stopping_patience"], has_validation_file),
        unless(v["critic"] != "shared_lora" or use_lora, "critic",
               "A shared_lora critic needs a frozen base: set use_lora to true."),
        unless(v.get("init_adapter") is None or use_lora, "init_adapter",
               "init_adapter is a LoRA adapter, which only a use_lora policy can continue."),
        unless(v["critic_layers"] is None or v["critic"] == "separate", "critic_layers",
               "Only a separate critic can have fewer layers (a shared_lora critic is the policy's base)."),
        # the reference of the KL penalty is the frozen base, i.e. the policy with its adapter switched off
        unless(v["kl_coef"] == 0 or use_lora, "kl_coef", "A KL penalty needs use_lora: true."),
        device_share(v, v["n_devices"]),
        unless(v.get("algorithm") != "grpo" or grpo_samples >= 2,
               "group_size" if v["compute_multiplier"] == 1 else "compute_multiplier",
               "grpo needs at least 2 samples per prompt to form a group baseline."),
    )  # fmt: skip
    return next((refusal for refusal in refusals if refusal is not None), None)


def unless(ok: bool, param: str, message: str) -> Refusal | None:
    """A Refusal of `param` with `message` unless the rule holds."""
    return None if ok else Refusal(param, message)
