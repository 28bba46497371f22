"""Shared pieces: strict request models and the OpenAI list envelope."""

from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")


class StrictModel(BaseModel):
    """Request models: unknown keys and wrong types are errors naming the param, never coerced."""

    model_config = ConfigDict(extra="forbid", strict=True)


class ListPublic(BaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None

    @classmethod
    def page(cls, items: list[T], *, has_more: bool, ids: list[str]) -> "ListPublic[T]":
        return cls(
            data=items, has_more=has_more, first_id=ids[0] if ids else None, last_id=ids[-1] if ids else None
        )


class DeletedPublic(BaseModel):
    id: str
    object: str
    deleted: bool = True
