"""File objects (OpenAI's shape; `sha256`, `line_count` and `item_fields` are extensions)."""

from typing import Literal

from pydantic import BaseModel

from core.models import File


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str
    status_details: str | None = None
    expires_at: int | None = None
    sha256: str
    line_count: int
    item_fields: list[str]

    @classmethod
    def of(cls, file: File) -> "FileObject":
        return cls(
            id=file.id,
            bytes=file.bytes,
            created_at=file.created_at,
            filename=file.filename,
            purpose=file.purpose,
            status=file.status,
            sha256=file.sha256,
            line_count=file.line_count,
            item_fields=list(file.item_fields),
        )
