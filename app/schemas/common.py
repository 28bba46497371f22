"""Shared pieces: strict request models and the OpenAI list envelope."""

from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from jobspec.text import check_texts

T = TypeVar("T")


# OpenAI's metadata: at most 16 pairs, keys up to 64 and values up to 512 characters.
Metadata = Annotated[
    dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]], Field(max_length=16)
]


class StrictModel(BaseModel):
    """Request models: unknown keys and wrong types are errors naming the param, never coerced.

    No float may be NaN or infinite (JSON's `1e309` parses as infinity), and no string, nor any key or
    value inside a field, may hold NUL or a lone surrogate: PostgreSQL refuses NUL in text, and either
    broke a job at the worker long after it was accepted.
    """

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _clean_text(cls, value: Any) -> Any:
        return check_texts(value)


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
