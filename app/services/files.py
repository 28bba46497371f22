"""Uploaded files: streamed to disk under a server-generated name, size-limited, hashed and validated, then
published to the artifact store (core/storage.py) under a key made of the file's id."""

import hashlib
import itertools
import json
import os
from pathlib import Path
from typing import IO, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import Conflict, InvalidRequest, NotFound, PayloadTooLarge
from app.services.pagination import page
from core.models import ACTIVE_STATUSES, File, Job, JobStatus, Tenant, new_id
from core.settings import Settings
from core.storage import artifact_store
from jobspec.items import ItemError, normalise_item
from jobspec.templates import MAX_PATH_DEPTH, ItemPath, present_paths

PURPOSES = ("fine-tune",)
MAX_LISTED_PATHS = 2000
_CHUNK = 1024 * 1024


def inspect_jsonl(path: Path) -> tuple[int, list[str], int]:
    """Check every line is a training item (jobspec.items); return (item count, the field paths present on
    every item — nested ones dotted, "meta.gold" — and the characters of the longest prompt).

    Raises InvalidRequest naming the first bad line (1-based) and what is wrong with it.
    """
    count = 0
    longest = 0
    common: set[str] | None = None
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue  # blank lines (e.g. a trailing newline) carry no item
            item = _parse_item(raw, number)
            count += 1
            paths = present_paths(item)
            common = paths if common is None else common & paths
            longest = max(longest, sum(len(message["content"]) for message in item["messages"]))
    if count == 0:
        raise InvalidRequest("The file contains no training items.", param="file", code="invalid_file")
    return count, sorted(common or ())[:MAX_LISTED_PATHS], longest


def missing_item_paths(file: File, paths: set[ItemPath]) -> list[str]:
    """The template paths (dotted) that not every item of the file has; a list index or the recorded depth
    ends the check (deeper parts are checked when the grader renders: a missing value is a flagged 0)."""
    present = set(file.item_fields)
    missing = set()
    for path in paths:
        prefix = list(itertools.takewhile(lambda key: not key.isdigit(), path))[:MAX_PATH_DEPTH]
        if prefix and ".".join(prefix) not in present:
            missing.add(".".join(path))
    return sorted(missing)


def _parse_item(raw: bytes, number: int) -> dict[str, Any]:
    def bad(what: str) -> InvalidRequest:
        return InvalidRequest(f"Invalid file: line {number}: {what}", param="file", code="invalid_file")

    try:
        item = json.loads(raw.decode("utf-8"))
        # A lone surrogate (an escaped "\ud800") decodes fine but fails the tokenizer at the worker.
        json.dumps(item, ensure_ascii=False).encode("utf-8")
    except UnicodeDecodeError:
        raise bad("not valid UTF-8") from None
    except UnicodeEncodeError:
        raise bad("contains a lone surrogate (invalid Unicode)") from None
    except json.JSONDecodeError as exc:
        raise bad(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise bad("nested too deeply") from None
    try:
        return normalise_item(item)
    except ItemError as exc:
        raise bad(str(exc)) from None


def create_file(
    session: Session, *, settings: Settings, tenant: Tenant, upload: IO[bytes], filename: str, purpose: str
) -> File:
    if purpose not in PURPOSES:
        raise InvalidRequest(
            f"Invalid purpose '{purpose}'; expected one of {list(PURPOSES)}.", param="purpose"
        )
    store = artifact_store(settings)
    file_id = new_id("file")
    key = f"files/{file_id}.jsonl"
    final = store.local_path(key)
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_suffix(".part")
    try:
        size, digest = _copy_limited(upload, partial, limit=settings.max_upload_bytes)
        line_count, fields, longest = inspect_jsonl(partial)
        os.replace(partial, final)
        # Before the row: a file the DB lists is always in the store. The API keeps no copy of its own.
        store.publish(key, keep_copy=False)
        file = File(
            id=file_id,
            tenant_id=tenant.id,
            filename=filename[:512],
            purpose=purpose,
            bytes=size,
            sha256=digest,
            storage_uri=key,
            line_count=line_count,
            item_fields=fields,
            max_prompt_chars=longest,
        )
        session.add(file)
        session.commit()
    except BaseException:
        partial.unlink(missing_ok=True)
        store.delete(key)
        raise
    return file


def _copy_limited(upload: IO[bytes], target: Path, *, limit: int) -> tuple[int, str]:
    size = 0
    digest = hashlib.sha256()
    with target.open("wb") as out:
        while chunk := upload.read(_CHUNK):
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"File is larger than the {limit} byte limit.", param="file")
            digest.update(chunk)
            out.write(chunk)
    return size, digest.hexdigest()


def get_file(session: Session, *, tenant: Tenant, file_id: str) -> File:
    file = session.scalar(select(File).where(File.id == file_id, File.tenant_id == tenant.id))
    if file is None:
        raise NotFound(f"No such File object: {file_id}", param="id")
    return file


def list_files(
    session: Session, *, tenant: Tenant, purpose: str | None, after: str | None, limit: int
) -> tuple[list[File], bool]:
    query = select(File).where(File.tenant_id == tenant.id)
    if purpose is not None:
        query = query.where(File.purpose == purpose)
    return page(session, query, key=File.created_at, ident=File.id, after=after, limit=limit)


def delete_file(session: Session, *, settings: Settings, tenant: Tenant, file_id: str) -> None:
    file = get_file(session, tenant=tenant, file_id=file_id)
    in_use = session.scalar(
        select(Job.id).where(
            Job.tenant_id == tenant.id,
            Job.status.in_([*ACTIVE_STATUSES, JobStatus.paused]),
            (Job.training_file == file_id) | (Job.validation_file == file_id),
        )
    )
    if in_use is not None:
        raise Conflict(
            f"File {file_id} is used by fine-tuning job {in_use}, which has not finished.", param="id"
        )
    key = file.storage_uri
    session.delete(file)
    session.commit()
    artifact_store(settings).delete(key)
