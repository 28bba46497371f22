"""The model server on CPU: requests/s and p50/p99 latency at 1, 8 and 32 concurrent clients, with the
dynamic batcher (up to 16 sequences per batch) and one request at a time (batch size 1), in one run.

Two `sppo serve-models` processes (one per mode, single-threaded torch) serve the same base model; each
concurrency level runs against both, batched first, so machine load drifts into both alike. Requests
go straight to the model server's `/internal/generate` (the API's proxy adds the same small cost to
both modes). Greedy decoding with a fixed budget of new tokens; `--model random` uses an untrained
model of sppo-tiny's architecture (same cost per token, no fixture build needed).

    python benchmarks/serving.py                      # sppo-tiny, 1/8/32 clients
    python benchmarks/serving.py --requests-per-client 2 --max-tokens 8   # a short run

Writes benchmarks/results/inference.json.
"""

import argparse
import asyncio
import json
import os
import platform
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

RESULTS_DIR = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [f"{a}+{b}+{c}=" for a, b, c in ((12, 34, 56), (71, 18, 9), (40, 40, 40), (99, 98, 97))]
MODES = {"batched": 16, "one_at_a_time": 1}
SECRET = secrets.token_urlsafe(32)  # the servers' SPPO_INFERENCE_SECRET, shown as the API shows it


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _random_model(registry: Path) -> str:
    import torch

    from worker.engine.fixture_build import build_model, build_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    build_model(len(tokenizer), 64, seed=0).save_pretrained(registry / "random-tiny")
    tokenizer.save_pretrained(registry / "random-tiny")
    return "random-tiny"


def _start(data_dir: Path, registry: Path, batch_size: int) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    env = {**os.environ, "SPPO_DATA_DIR": str(data_dir), "SPPO_MODEL_REGISTRY_DIR": str(registry),
           "SPPO_INFERENCE_PORT": str(port), "SPPO_INFERENCE_MAX_BATCH_SIZE": str(batch_size),
           "SPPO_INFERENCE_MAX_PENDING": "256", "SPPO_INFERENCE_SECRET": SECRET,
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    log = (data_dir / f"models-{batch_size}.log").open("wb")
    command = [str(Path(sys.executable).parent / "sppo"), "serve-models", "--loglevel", "warning"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600  # torch and the model load slowly on a busy machine
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"model server did not start; see {log.name}")
        time.sleep(0.3)


async def _level(url: str, model: str, clients: int, per_client: int, max_tokens: int) -> dict[str, Any]:
    latencies: list[float] = []

    async def client(index: int, http: httpx.AsyncClient) -> None:
        for i in range(per_client):
            message = {"role": "user", "content": PROMPTS[(index + i) % len(PROMPTS)]}
            body = {"kind": "chat", "model": model, "base_model": model, "temperature": 0.0,
                    "max_tokens": max_tokens, "messages": [message]}  # fmt: skip
            started = time.perf_counter()
            response = await http.post(f"{url}/internal/generate", json=body)
            response.raise_for_status()
            latencies.append(time.perf_counter() - started)

    async with httpx.AsyncClient(
        timeout=600,
        limits=httpx.Limits(max_connections=clients),
        headers={"Authorization": f"Bearer {SECRET}"},
    ) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(i, http) for i in range(clients)))
        wall = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "wall_s": round(wall, 3),
        "requests_per_s": round(len(latencies) / wall, 3),
        "tokens_per_s": round(len(latencies) * max_tokens / wall, 1),
        "p50_latency_s": round(statistics.median(latencies), 4),
        "p99_latency_s": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=["sppo-tiny", "random"], default="sppo-tiny")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "inference.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sppo-bench-inference-") as tmp:
        data_dir, registry = Path(tmp), Path(tmp) / "models"
        registry.mkdir()
        model = "sppo-tiny" if args.model == "sppo-tiny" else _random_model(registry)
        servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
        try:
            for mode, size in MODES.items():
                servers[mode] = _start(data_dir, registry, size)
            for _, url in servers.values():  # load the model and warm up both
                asyncio.run(_level(url, model, 1, 2, args.max_tokens))
            levels = []
            for clients in (int(c) for c in args.clients.split(",")):
                row: dict[str, Any] = {"clients": clients}
                for mode, (_, url) in servers.items():
                    row[mode] = asyncio.run(
                        _level(url, model, clients, args.requests_per_client, args.max_tokens)
                    )
                    print(f"{clients:>3} clients {mode:>14}: {row[mode]}", flush=True)
                row["requests_per_s_ratio"] = round(
                    row["batched"]["requests_per_s"] / row["one_at_a_time"]["requests_per_s"], 2
                )
                levels.append(row)
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait(timeout=30)
    result = {
        "benchmark": "inference",
        "model": model,
        "max_tokens": args.max_tokens,
        "requests_per_client": args.requests_per_client,
        "batch_sizes": MODES,
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
        },
        "levels": levels,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
