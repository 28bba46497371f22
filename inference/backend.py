"""Serving backends behind one interface: transformers (CPU or GPU, always there) and vLLM (optional)."""

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

import torch

from core.settings import Settings
from inference.batcher import Batcher, Event, Generation
from inference.models import AdapterNotFound, ModelCache, adapter_path
from inference.prepare import GenerateRequest, RequestError, prepare


class Backend(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def stats(self) -> dict[str, Any]: ...

    async def submit(
        self, request: GenerateRequest, emit: Callable[[Event], None]
    ) -> tuple[int, Callable[[], None]]:
        """Queue a request; (prompt tokens, a function that cancels it). Events arrive through `emit`."""
        ...


class TransformersBackend:
    def __init__(self, settings: Settings) -> None:
        self.cache = ModelCache(settings, torch.device(settings.inference_device))
        self.batcher = Batcher(
            self.cache,
            max_batch_size=settings.inference_max_batch_size,
            wait_s=settings.inference_batch_wait_ms / 1000,
            max_pending=settings.inference_max_pending,
        )

    def start(self) -> None:
        self.batcher.start()

    def stop(self) -> None:
        self.batcher.stop()

    def stats(self) -> dict[str, Any]:
        return {
            "pending": len(self.batcher.pending),
            "base_models": {name: len(base.adapters) for name, base in self.cache.bases.items()},
        }

    async def submit(
        self, request: GenerateRequest, emit: Callable[[Event], None]
    ) -> tuple[int, Callable[[], None]]:
        base = await asyncio.to_thread(self.cache.base, request.base_model)
        if request.adapter_uri is not None:
            try:
                await asyncio.to_thread(adapter_path, self.cache.settings, request.adapter_uri)
            except AdapterNotFound:
                raise RequestError(404, f"The files of model '{request.model}' are no longer stored.",
                                   param="model", code="model_not_found") from None  # fmt: skip
        prepared = await asyncio.to_thread(prepare, request, base)
        generation = Generation(
            base=request.base_model, adapter_uri=request.adapter_uri, prompt_ids=prepared.prompt_ids,
            n=request.n, max_tokens=prepared.max_tokens, temperature=request.temperature,
            top_p=request.top_p, seed=request.seed, stops=request.stop, emit=emit,
        )  # fmt: skip
        self.batcher.submit(generation)
        return len(prepared.prompt_ids), generation.cancelled.set


def make_backend(settings: Settings) -> Backend:
    if settings.inference_backend == "vllm":
        from inference.vllm_backend import VllmBackend  # needs the optional `vllm` extra and a GPU

        return VllmBackend(settings)
    return TransformersBackend(settings)
