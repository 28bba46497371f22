"""`/v1/files`: upload, list, retrieve, download and delete training files."""

from typing import Annotated

from fastapi import APIRouter, Form, Query, UploadFile
from fastapi.responses import FileResponse, Response

from app.api.deps import After, CurrentTenant, SessionDep, SettingsDep
from app.api.openapi import JSONL, errors
from app.api.responses import artifact_download
from app.api.retry import ReadRetryRoute
from app.schemas.common import DeletedPublic, ListPublic
from app.schemas.files import FileObject
from app.services import files

router = APIRouter(prefix="/files", tags=["files"], route_class=ReadRetryRoute)


@router.post("", response_model=FileObject, responses=errors(400, 413))
def upload_file(
    session: SessionDep,
    settings: SettingsDep,
    tenant: CurrentTenant,
    file: UploadFile,
    purpose: Annotated[str, Form()],
) -> FileObject:
    created = files.create_file(
        session,
        settings=settings,
        tenant=tenant,
        upload=file.file,
        filename=file.filename or "",
        purpose=purpose,
    )
    return FileObject.of(created)


@router.get("", response_model=ListPublic[FileObject], responses=errors(400))
def list_files(
    session: SessionDep,
    tenant: CurrentTenant,
    after: After = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 10000,
    purpose: str | None = None,
) -> ListPublic[FileObject]:
    rows, has_more = files.list_files(session, tenant=tenant, purpose=purpose, after=after, limit=limit)
    return ListPublic.page([FileObject.of(f) for f in rows], has_more=has_more, ids=[f.id for f in rows])


@router.get("/{file_id}", response_model=FileObject, responses=errors(400, 404))
def retrieve_file(session: SessionDep, tenant: CurrentTenant, file_id: str) -> FileObject:
    return FileObject.of(files.get_file(session, tenant=tenant, file_id=file_id))


@router.get("/{file_id}/content", response_class=FileResponse, responses={200: JSONL, **errors(400, 404)})
def file_content(session: SessionDep, settings: SettingsDep, tenant: CurrentTenant, file_id: str) -> Response:
    file = files.get_file(session, tenant=tenant, file_id=file_id)
    return artifact_download(
        settings, key=file.storage_uri, media_type="application/jsonl", filename=file.filename
    )


@router.delete("/{file_id}", response_model=DeletedPublic, responses=errors(400, 404, 409))
def delete_file(
    session: SessionDep, settings: SettingsDep, tenant: CurrentTenant, file_id: str
) -> DeletedPublic:
    files.delete_file(session, settings=settings, tenant=tenant, file_id=file_id)
    return DeletedPublic(id=file_id, object="file")
