"""Model objects (OpenAI's shape)."""

from typing import Any, Literal

from pydantic import BaseModel


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    # Extensions, for base models: the grader the model declares it fits (sppo_grader.json), so clients
    # can default to a grader that can reward it, and its context length (positions).
    recommended_grader: dict[str, Any] | None = None
    context_length: int | None = None
