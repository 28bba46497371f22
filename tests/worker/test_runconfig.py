"""The API's hyperparameters that reach the engine under their own name (worker/runconfig.py)."""

from dataclasses import fields

from app.schemas.method import ReinforcementHyperparameters
from worker.engine.config import RunConfig
from worker.runconfig import SAME_NAME


def test_every_same_name_hyperparameter_is_an_api_field_and_a_run_config_field() -> None:
    assert {"dtype", "gradient_checkpointing", "attn_implementation"} <= set(SAME_NAME)
    assert set(SAME_NAME) <= set(ReinforcementHyperparameters.model_fields)
    assert set(SAME_NAME) <= {f.name for f in fields(RunConfig)}
