"""The vLLM backend (SPPO_INFERENCE_BACKEND=vllm; `pip install 'sppo-service[vllm]'`, a CUDA GPU).

vLLM's multi-LoRA serving batches requests for several adapters of one base continuously; this adapts
it to the server's event interface. One engine per base model (the first one asked for; vLLM holds a
GPU's memory per engine). Not exercised by the test suite, which runs on CPU without vLLM.
"""

import asyncio
import hashlib
import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from core.settings import Settings
from inference.batcher import Busy, Delta, Done, Event, Failed, Finished
from inference.models import AdapterNotFound, adapter_path
from inference.prepare import GenerateRequest, RequestError, prepare
from worker.engine.policy import load_tokenizer
from worker.runconfig import base_model_dir

try:
    from vllm import AsyncEngineArgs, AsyncLLMEngine, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest
except ImportError as exc:  # the optional extra is not installed
    raise RuntimeError(
        "SPPO_INFERENCE_BACKEND=vllm needs vLLM: pip install 'sppo-service[vllm]' (CUDA GPUs only)"
    ) from exc


@dataclass
class _VllmBase:
    name: str
    directory: Path
    tokenizer: PreTrainedTokenizerBase
    context_length: int
    engine: Any
    tokenizer_lock: threading.Lock = field(default_factory=threading.Lock)


class VllmBackend:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bases: dict[str, _VllmBase] = {}
        self.lora_ids = itertools.count(1)
        self.loras: dict[str, int] = {}
        self.in_flight = 0

    def start(self) -> None:
        pass

    def stop(self) -> None:
        for base in self.bases.values():
            base.engine.shutdown_background_loop()

    def stats(self) -> dict[str, Any]:
        return {"in_flight": self.in_flight, "base_models": {n: len(self.loras) for n in self.bases}}

    def _base(self, name: str) -> _VllmBase:
        if name not in self.bases:
            directory = base_model_dir(self.settings, name)
            args = AsyncEngineArgs(model=str(directory), enable_lora=True, max_lora_rank=64,
                                   max_loras=self.settings.inference_max_adapters,
                                   max_num_seqs=self.settings.inference_max_batch_size,
                                   trust_remote_code=False)  # fmt: skip
            engine = AsyncLLMEngine.from_engine_args(args)
            tokenizer = load_tokenizer(directory)
            length = int(getattr(engine.engine.model_config, "max_model_len", 2048))
            self.bases[name] = _VllmBase(name, directory, tokenizer, length, engine)
        return self.bases[name]

    async def submit(
        self, request: GenerateRequest, emit: Callable[[Event], None]
    ) -> tuple[int, Callable[[], None]]:
        if self.in_flight >= self.settings.inference_max_pending:
            raise Busy
        base = await asyncio.to_thread(self._base, request.base_model)
        lora = None
        if request.adapter_uri is not None:
            try:
                path = await asyncio.to_thread(adapter_path, self.settings, request.adapter_uri)
            except AdapterNotFound:
                raise RequestError(404, f"The files of model '{request.model}' are no longer stored.",
                                   param="model", code="model_not_found") from None  # fmt: skip
            lora_id = self.loras.setdefault(request.adapter_uri, next(self.lora_ids))
            name = "a" + hashlib.sha256(request.adapter_uri.encode()).hexdigest()[:16]
            lora = LoRARequest(name, lora_id, str(path))
        prepared = await asyncio.to_thread(prepare, request, base)
        params = SamplingParams(n=request.n, temperature=request.temperature, top_p=request.top_p,
                                max_tokens=prepared.max_tokens, stop=request.stop or None,
                                seed=request.seed)  # fmt: skip
        request_id = hashlib.sha256(f"{id(emit)}-{next(self.lora_ids)}".encode()).hexdigest()[:24]
        task = asyncio.create_task(self._run(base, prepared.prompt_ids, params, lora, request_id, emit))

        def cancel() -> None:
            task.cancel()

        return len(prepared.prompt_ids), cancel

    async def _run(self, base: _VllmBase, ids: list[int], params: Any, lora: Any, request_id: str,
                   emit: Callable[[Event], None]) -> None:  # fmt: skip
        self.in_flight += 1
        sent: dict[int, int] = {}
        try:
            async for output in base.engine.generate(TokensPrompt(prompt_token_ids=ids), params, request_id,
                                                     lora_request=lora):  # fmt: skip
                for choice in output.outputs:
                    if len(choice.text) > sent.get(choice.index, 0):
                        emit(Delta(choice.index, choice.text[sent.get(choice.index, 0) :]))
                        sent[choice.index] = len(choice.text)
                if output.finished:
                    for choice in output.outputs:
                        reason = "length" if choice.finish_reason == "length" else "stop"
                        emit(Finished(choice.index, reason, len(choice.token_ids)))
                    emit(Done())
        except asyncio.CancelledError:
            await base.engine.abort(request_id)
            raise
        except Exception as exc:  # one failed request must not take the server down
            emit(Failed(f"generation failed: {type(exc).__name__}"))
        finally:
            self.in_flight -= 1
