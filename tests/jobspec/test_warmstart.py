"""What a warm start takes from its parent's adapter_config.json, and which settings it refuses."""

import pytest

from jobspec.warmstart import WarmStartError, adapter_values, continued_hyperparameters

LORA = {
    "peft_type": "LORA",
    "r": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.05,
    "target_modules": ["v_proj", "q_proj"],
}


def test_the_parents_adapter_sets_the_lora_fields() -> None:
    assert adapter_values(LORA, parent="ft:p") == {
        "use_lora": True, "lora_rank": 8, "lora_alpha": 16, "lora_dropout": 0.05,
        "lora_target_modules": ["q_proj", "v_proj"],
    }  # fmt: skip
    assert continued_hyperparameters({"batch_size": 4}, LORA, parent="ft:p") == {
        "batch_size": 4, "lora_rank": 8, "lora_alpha": 16
    }  # fmt: skip
    assert (
        continued_hyperparameters({"lora_rank": 8, "lora_alpha": 16.0}, LORA, parent="ft:p")["lora_rank"] == 8
    )


@pytest.mark.parametrize(
    ("hyper", "param"), [({"lora_rank": 16}, "lora_rank"), ({"lora_alpha": 8}, "lora_alpha")]
)
def test_a_conflicting_setting_is_refused_by_name(hyper: dict[str, int], param: str) -> None:
    with pytest.raises(WarmStartError) as caught:
        continued_hyperparameters(hyper, LORA, parent="ft:p")
    assert (
        caught.value.param == f"method.reinforcement.hyperparameters.{param}"
        and "ft:p" in caught.value.message
    )


def test_only_a_lora_adapter_is_continued() -> None:
    with pytest.raises(WarmStartError) as caught:
        adapter_values({**LORA, "peft_type": "IA3"}, parent="ft:p")
    assert caught.value.param == "model"
