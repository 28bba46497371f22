"""Which step a finished run returns as its model: the API accepts exactly what the engine does."""

from typing import Literal

MODEL_SELECTIONS = ("best", "last")
"""`best`: the checkpoint with the highest validation pass@1 (the earlier step on a tie); `last`: the last
step. Without a validation file there is nothing to select by, and the model is the last step."""

ModelSelection = Literal["best", "last"]


def model_selection(asked: str, has_validation_file: bool) -> str:
    """The selection a run applies: without a validation file there is nothing to select by ("last")."""
    return asked if has_validation_file else "last"
