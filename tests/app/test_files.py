"""`/v1/files`: upload, validation with line numbers, size limit, list, retrieve, content, delete."""

import hashlib
import select
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.services.files import inspect_jsonl

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


SFT_LINE = '{"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}\n'
IMAGE_LINE = (
    '{"messages": [{"role": "user", "content": [{"type": "text", "text": "Count them."}, '
    '{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}], "answer": "3"}\n'
)
PARTS_LINE = (
    '{"messages": [{"role": "user", "content": [{"type": "text", "text": "What is "}, '
    '{"type": "text", "text": "2+3?"}]}], "answer": "5"}\n'
)


def test_content_part_arrays_are_accepted(api: httpx.Client, upload: Callable[..., dict[str, Any]]) -> None:
    file = upload(PARTS_LINE + ITEM)
    assert (file["line_count"], file["item_fields"]) == (2, ["answer", "messages"])
    assert api.get(f"/v1/files/{file['id']}/content").content == (PARTS_LINE + ITEM).encode()  # kept as sent


def test_the_longest_prompt_is_measured_on_the_joined_text(tmp_path: Path) -> None:
    path = tmp_path / "parts.jsonl"
    path.write_text(PARTS_LINE)
    assert inspect_jsonl(path) == (1, ["answer", "messages"], len("What is 2+3?"))


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
        (ITEM + SFT_LINE, "line 2: the last message is the assistant's"),
        (
            ITEM + SFT_LINE,
            "looks like supervised fine-tuning data: drop the last (assistant) message and add "
            "the expected answer as a field, e.g. `answer`",
        ),
        (ITEM.replace("}\n", ', "tools": []}\n'), "line 1: 'tools' is not supported yet"),
        (IMAGE_LINE, "line 1: messages[0].content[1] is a 'image_url' part; only text parts are supported"),
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


def test_chunked_body_over_the_limit_is_refused_and_closed(
    server: Server, api: httpx.Client, key: str
) -> None:
    """A chunked upload of 1 GiB gets its 413 and a closed connection within 1 s of passing the limit,
    instead of the server reading (and discarding) the rest of it; nothing is stored."""
    files_dir = server.data_dir / "files"
    files_dir.mkdir(exist_ok=True)
    before = set(files_dir.iterdir())
    host, port = server.base_url.removeprefix("http://").split(":")
    head = (
        f"POST /v1/files HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    part = (
        b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n\r\n'
    )
    data = (ITEM.encode() * (1024 * 1024 // len(ITEM)))[: 1024 * 1024]
    chunk = b"%x\r\n%s\r\n" % (len(data), data)
    limit = MAX_UPLOAD_BYTES + 64 * 1024  # the file's limit plus the multipart slack
    sent, over_at = 0, None
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(head + b"%x\r\n%s\r\n" % (len(part), part))
        while sent < 1024**3 and not select.select([sock], [], [], 0)[0]:
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                break  # closed, or no longer read: _read_until_closed tells which
            sent += len(data)
            over_at = over_at or (time.monotonic() if sent > limit else None)
        assert over_at is not None, "the server answered before the body passed the limit"
        answer, closed = _read_until_closed(sock, deadline=over_at + 1)
    assert closed, f"the connection was still open 1 s after the limit ({sent} bytes sent)"
    assert sent < 64 * 1024 * 1024
    assert answer.startswith(b"HTTP/1.1 413"), answer[:100]
    assert set(files_dir.iterdir()) == before
    assert api.get("/v1/files").json()["data"] == []


def _read_until_closed(sock: socket.socket, *, deadline: float) -> tuple[bytes, bool]:
    """What the server sent, and whether it closed the connection (FIN or reset) before `deadline`."""
    received = b""
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return received, True
        if not data:
            return received, True
        received += data
    return received, False
