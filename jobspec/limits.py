"""The limits of every hyperparameter, written once: the API's request schema and the engine's RunConfig type
their fields with these, so a value one side accepts the other runs.

These are the limits of what can run. The API caps some further (at most 100 epochs, 64 devices, ...):
those caps bound what one tenant may ask of a shared service and live in its schema alone. The rules that
join two fields and that the API checks too are the functions below; the engine's other cross-field rules
are in its config.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field, Strict

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
