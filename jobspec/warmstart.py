"""A job that continues a fine-tuned model or a checkpoint (a warm start): what it takes from its parent.

The job trains the parent's LoRA adapter further, so the adapter's own config wins: its rank, alpha, target
modules and dropout are the job's. A job that sets `lora_rank` or `lora_alpha` to another value is refused
(the API answers 400 naming the field, before anything runs); the same value, or none, is accepted. A parent
trained in full (no LoRA adapter) cannot be continued yet. Every other hyperparameter is the new job's own.
"""

from collections.abc import Mapping
from typing import Any, Final

from jobspec.hyperparameters import HYPERPARAMETERS

ADAPTER_CONFIG: Final = "adapter_config.json"
"""The file of a peft adapter folder that holds its config (what peft's `save_pretrained` writes)."""
ADAPTER_WEIGHTS: Final = "adapter_model.safetensors"
"""The file of a peft adapter folder that holds its weights."""
PARENT_FIELDS: Final = {"lora_rank": "r", "lora_alpha": "lora_alpha"}
"""API hyperparameters a parent's adapter fixes, and their names in its adapter_config.json."""


class WarmStartError(ValueError):
    """The job cannot continue this parent as asked; `param` names the request field at fault."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def adapter_values(adapter_config: Mapping[str, Any], *, parent: str) -> dict[str, Any]:
    """The engine fields a parent's adapter_config.json fixes for the job that continues it."""
    if adapter_config.get("peft_type") != "LORA":
        raise WarmStartError(
            f"Model '{parent}' is not a LoRA adapter, and only LoRA adapters can be continued.", "model"
        )
    targets = adapter_config.get("target_modules")
    return {
        "use_lora": True,
        "lora_rank": int(adapter_config["r"]),
        "lora_alpha": adapter_config["lora_alpha"],
        "lora_dropout": float(adapter_config.get("lora_dropout") or 0.0),
        # peft saves the modules it adapted as a list (or a regex string): the same modules again
        "lora_target_modules": sorted(targets) if isinstance(targets, list) else targets,
    }


def continued_hyperparameters(
    hyper: Mapping[str, Any], adapter_config: Mapping[str, Any], *, parent: str
) -> dict[str, Any]:
    """The job's hyperparameters with the parent's LoRA settings; WarmStartError for one set otherwise."""
    values = adapter_values(adapter_config, parent=parent)
    for name in PARENT_FIELDS:
        given = hyper.get(name)
        if given is not None and float(given) != float(values[name]):
            raise WarmStartError(
                f"{name} {given} differs from the {values[name]} of the adapter of '{parent}', which this "
                f"job continues: leave {name} out (the parent's adapter sets it).",
                f"{HYPERPARAMETERS}.{name}",
            )
    return {**hyper, **{name: values[name] for name in PARENT_FIELDS}}
