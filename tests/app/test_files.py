"""`/v1/files`: upload, validation with line numbers, size limit, list, retrieve, content, delete."""

import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from .conftest import ITEM, MAX_UPLOAD_BYTES, Server, assert_error


def test_upload_retrieve_content_delete(
    server: Server, api: httpx.Client, upload: Callable[..., dict[str, Any]]
) -> None:
    content = ITEM + '{"messages": [{"role": "user", "content": "1+1?"}], "answer": "2", "level": 1}\n'
    file = upload(content, filename="../../etc/passwd")
    assert file["id"].startswith("file-")
    assert file["object"] == "file"
    assert file["bytes"] == len(content.encode())
    assert file["filename"] == "../../etc/passwd"  # metadata only
    assert file["purpose"] == "fine-tune"
    assert file["status"] == "processed"
    assert file["sha256"] == hashlib.sha256(content.encode()).hexdigest()
    assert file["line_count"] == 2
    assert file["item_fields"] == ["answer", "messages"]  # `level` is not on every line
    stored = list((server.data_dir / "files").iterdir())
    assert [p.name for p in stored if file["id"] in p.name] == [f"{file['id']}.jsonl"]

    assert api.get(f"/v1/files/{file['id']}").json() == file
    download = api.get(f"/v1/files/{file['id']}/content")
    assert download.status_code == 200
    assert download.content == content.encode()

    deleted = api.delete(f"/v1/files/{file['id']}")
    assert deleted.json() == {"id": file["id"], "object": "file", "deleted": True}
    assert_error(api.get(f"/v1/files/{file['id']}"), 404)
    assert_error(api.get(f"/v1/files/{file['id']}/content"), 404)
    assert_error(api.delete(f"/v1/files/{file['id']}"), 404)
    assert not (server.data_dir / "files" / f"{file['id']}.jsonl").exists()


def test_list_pagination(api: httpx.Client, upload: Callable[..., dict[str, Any]]) -> None:
    ids = [upload()["id"] for _ in range(3)]
    everything = api.get("/v1/files").json()
    assert everything["object"] == "list"
    assert sorted(f["id"] for f in everything["data"]) == sorted(ids)
    assert everything["has_more"] is False
    first = api.get("/v1/files", params={"limit": 2}).json()
    assert first["has_more"] is True and len(first["data"]) == 2
    rest = api.get("/v1/files", params={"limit": 2, "after": first["last_id"]}).json()
    assert rest["has_more"] is False
    assert [f["id"] for f in first["data"] + rest["data"]] == [f["id"] for f in everything["data"]]
    assert_error(api.get("/v1/files", params={"after": "file-nope"}), 400, "after")
    assert_error(api.get("/v1/files", params={"limit": 0}), 400, "limit")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (ITEM + "not json\n", "line 2: not valid JSON"),
        (ITEM + ITEM + "[1, 2]\n", "line 3: expected a JSON object"),
        ('{"prompt": "x"}\n', "line 1: 'messages' must be a non-empty list"),
        ('{"messages": []}\n', "line 1: 'messages' must be a non-empty list"),
        (ITEM + '{"messages": [{"role": "user"}]}\n', "line 2: messages[0].content must be a string"),
        ('{"messages": [{"content": "hi"}]}\n', "line 1: messages[0].role must be a non-empty string"),
        (ITEM + "\n" + '{"messages": ["hi"]}\n', "line 3: messages[0] must be an object"),
        ("\n\n", "no training items"),
    ],
)
def test_bad_jsonl_names_the_line(server: Server, api: httpx.Client, content: str, fragment: str) -> None:
    (server.data_dir / "files").mkdir(exist_ok=True)
    before = set((server.data_dir / "files").iterdir())
    response = api.post(
        "/v1/files", data={"purpose": "fine-tune"}, files={"file": ("t.jsonl", content.encode())}
    )
    error = assert_error(response, 400, "file")
    assert fragment in error["message"]
    assert set((server.data_dir / "files").iterdir()) == before  # nothing left behind


def test_invalid_utf8_and_purpose(api: httpx.Client) -> None:
    response = api.post(
        "/v1/files", data={"purpose": "fine-tune"}, files={"file": ("t.jsonl", b"\xff\xfe\n")}
    )
    assert "line 1: not valid UTF-8" in assert_error(response, 400, "file")["message"]
    response = api.post("/v1/files", data={"purpose": "batch"}, files={"file": ("t.jsonl", ITEM.encode())})
    assert_error(response, 400, "purpose")
    assert_error(api.post("/v1/files", files={"file": ("t.jsonl", ITEM.encode())}), 400, "purpose")
    assert_error(api.post("/v1/files", data={"purpose": "fine-tune"}), 400, "file")


def test_size_limit_is_413(api: httpx.Client) -> None:
    line = ITEM.encode()
    # Far over the limit: refused by Content-Length before the body is read.
    huge = line * (2 * MAX_UPLOAD_BYTES // len(line))
    response = api.post("/v1/files", data={"purpose": "fine-tune"}, files={"file": ("big.jsonl", huge)})
    assert_error(response, 413)
    # Just over the limit (within the multipart slack): refused while streaming to disk.
    barely = line * (MAX_UPLOAD_BYTES // len(line) + 1)
    response = api.post("/v1/files", data={"purpose": "fine-tune"}, files={"file": ("big.jsonl", barely)})
    assert_error(response, 413, "file")
    # Chunked upload without Content-Length: counted while it arrives.
    head = (
        b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n\r\n'
    )

    def chunks() -> Iterator[bytes]:
        yield head
        for _ in range(3 * MAX_UPLOAD_BYTES // (64 * 1024)):
            yield line * (64 * 1024 // len(line))
        yield b"\r\n--b--\r\n"

    response = api.post(
        "/v1/files", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=b"}
    )
    assert "content-length" not in response.request.headers
    assert_error(response, 413)
