"""Request heads: clients that send one a byte at a time (slowloris) are cut off after the header timeout
while everyone else is served meanwhile, and an oversized head is refused."""

import contextlib
import select
import socket
import time
from urllib.parse import urlsplit

import httpx

from app.http_protocol import MAX_HEAD_BYTES
from tests.app.conftest import HEADER_TIMEOUT_S, Server

SLOW_CLIENTS = 300
TRICKLE_EVERY_S = 0.5  # each slow client sends one more byte of a header this often
PARTIAL_HEAD = b"GET /health HTTP/1.1\r\nHost: slow\r\nX-Slow: "


def open_slow_clients(server: Server, count: int) -> list[socket.socket]:
    address = urlsplit(server.base_url)
    clients = []
    for _ in range(count):
        sock = socket.create_connection((address.hostname, address.port), timeout=5)
        sock.sendall(PARTIAL_HEAD)
        sock.setblocking(False)
        clients.append(sock)
    return clients


def closed_by_server(sock: socket.socket) -> bytes | None:
    """What the server sent before closing (b"" for nothing), or None while the connection is open."""
    received = b""
    while select.select([sock], [], [], 0)[0]:
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk
    return None


def test_slow_request_heads_are_closed_after_the_timeout_while_others_are_served(server: Server) -> None:
    clients = open_slow_clients(server, SLOW_CLIENTS)
    started = time.monotonic()
    open_clients = set(clients)
    closed_after: list[float] = []
    answers: set[bytes] = set()
    served: list[float] = []
    deadline = started + 3 * HEADER_TIMEOUT_S + 10
    try:
        while open_clients and time.monotonic() < deadline:
            for sock in list(open_clients):
                answer = closed_by_server(sock)
                if answer is None:
                    try:
                        sock.send(b"a")
                        continue
                    except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                        answer = b""
                open_clients.discard(sock)
                closed_after.append(time.monotonic() - started)
                answers.add(answer.split(b"\r\n", 1)[0])
            before = time.monotonic()
            assert httpx.get(f"{server.base_url}/health", timeout=10).status_code == 200
            served.append(time.monotonic() - before)
            time.sleep(TRICKLE_EVERY_S)
    finally:
        for sock in clients:
            sock.close()
    still_open = f"{len(open_clients)} of {SLOW_CLIENTS} slow clients open after {deadline - started:.0f}s"
    assert not open_clients, still_open
    assert min(closed_after) >= HEADER_TIMEOUT_S - 0.5, "a head was cut off before its time"
    assert max(closed_after) <= HEADER_TIMEOUT_S + 5
    assert answers <= {b"HTTP/1.1 408 Request Timeout", b""}, answers
    print(
        f"{SLOW_CLIENTS} slow heads closed {min(closed_after):.1f}-{max(closed_after):.1f}s after they "
        f"started (timeout {HEADER_TIMEOUT_S}s); {len(served)} requests served meanwhile, "
        f"slowest {max(served) * 1000:.0f} ms"
    )


def test_an_oversized_request_head_is_refused(server: Server) -> None:
    address = urlsplit(server.base_url)
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):  # refused before it is all sent
            sock.sendall(
                b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4 * MAX_HEAD_BYTES + b"\r\n\r\n"
            )
        assert sock.recv(4096).startswith(b"HTTP/1.1 400"), "a head over the limit was accepted"
    headers = {"X-Big": "a" * (MAX_HEAD_BYTES - 1024)}
    assert httpx.get(f"{server.base_url}/health", headers=headers, timeout=10).status_code == 200
