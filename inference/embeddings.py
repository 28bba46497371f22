"""Text embeddings from a registry base model: `POST /internal/embeddings` (text_similarity's `cosine`).

An embedding is the attention-masked mean of the base model's last hidden state, L2-normalised. It is
computed on a worker thread, one request at a time, beside the batcher, never inside it: generation keeps
running. The model is the server's loaded copy (`ModelCache`), seen through a module tree of its own that
shares every weight: the batch thread injects LoRA layers into the loaded tree and, for a mixed-adapter
batch, puts forward hooks on them, so a forward pass through that tree from another thread would pick up
another request's adapters. The view drops LoRA layers, so it is always the plain base model.
"""

import asyncio
import copy
import itertools
import threading
from typing import Annotated, Any

import torch
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from pydantic import BaseModel, Field
from torch import nn
from transformers import PreTrainedModel

from inference.models import LoadedBase, ModelCache
from inference.prepare import RequestError
from jobspec.serving import MAX_EMBEDDING_CHARS, MAX_EMBEDDING_INPUTS, MAX_MODEL_NAME_CHARS
from worker.engine.errors import ModelNotFoundError

FORWARD_ROWS = 16  # texts per forward pass


class EmbeddingsRequest(BaseModel):
    """What the API sends after resolving the model; embeddings come from the base model alone."""

    model: str = Field(max_length=MAX_MODEL_NAME_CHARS)  # the public id, echoed in the response
    base_model: str = Field(max_length=MAX_MODEL_NAME_CHARS)
    input: list[Annotated[str, Field(max_length=MAX_EMBEDDING_CHARS)]] = Field(
        min_length=1, max_length=MAX_EMBEDDING_INPUTS
    )
    adapter_uri: None = None
    encoding_format: Annotated[str, Field(pattern="^float$")] = "float"


def plain_view(model: PreTrainedModel | PeftModel) -> nn.Module:
    """The base model as a module tree of its own that shares all weights with `model` (nothing is copied
    but the modules), without LoRA layers or the hooks on them."""
    inner = model.get_base_model() if isinstance(model, PeftModel) else model
    shared = {id(tensor): tensor for tensor in itertools.chain(inner.parameters(), inner.buffers())}
    view = copy.deepcopy(inner, memo=shared)
    tuned = [name for name, module in view.named_modules() if isinstance(module, BaseTunerLayer)]
    for name in tuned:  # outermost first: a replaced layer's children are gone with it
        parent_name, _, child = name.rpartition(".")
        parent = view.get_submodule(parent_name)
        layer = getattr(parent, child, None)
        if isinstance(layer, BaseTunerLayer):
            setattr(parent, child, layer.get_base_layer())
    view.eval()
    return view


class Embedder:
    def __init__(self, cache: ModelCache) -> None:
        self.cache = cache
        self.views: dict[str, tuple[LoadedBase, nn.Module]] = {}
        self.lock = threading.Lock()  # one embedding pass at a time: generation keeps its share of the cores

    def _backbone(self, base: LoadedBase) -> nn.Module:
        """The base's transformer without its LM head, as a plain view (built once per loaded base)."""
        with self.cache.lock:
            loaded = set(self.cache.bases)
        for name in [name for name in self.views if name not in loaded]:
            del self.views[name]  # evicted: let its weights go
        entry = self.views.get(base.name)
        if entry is None or entry[0] is not base:
            for attempt in range(3):  # the batch thread may be loading an adapter into the tree right now
                try:
                    view = plain_view(base.model)
                    break
                except RuntimeError:
                    if attempt == 2:
                        raise
            backbone = view.base_model if isinstance(view, PreTrainedModel) else view
            entry = self.views[base.name] = (base, backbone)
        return entry[1]

    def _token_ids(self, base: LoadedBase, texts: list[str]) -> list[list[int]]:
        tokenizer = base.tokenizer
        fallback = next(i for i in (tokenizer.bos_token_id, tokenizer.eos_token_id, 0) if i is not None)
        with base.tokenizer_lock:
            encoded = tokenizer(texts, truncation=True, max_length=base.context_length)["input_ids"]
        return [list(ids) or [fallback] for ids in encoded]

    @torch.inference_mode()
    def embed(self, base_name: str, texts: list[str]) -> tuple[list[list[float]], int]:
        """(one unit vector per text, the tokens read); ModelNotFoundError for an unknown base."""
        base = self.cache.base(base_name)
        ids = self._token_ids(base, texts)
        pad = base.tokenizer.pad_token_id or 0
        vectors: list[list[float]] = []
        with self.lock:
            backbone = self._backbone(base)
            device = next(backbone.parameters()).device
            for start in range(0, len(ids), FORWARD_ROWS):
                rows = ids[start : start + FORWARD_ROWS]
                width = max(len(row) for row in rows)
                input_ids = torch.tensor([row + [pad] * (width - len(row)) for row in rows], device=device)
                mask = torch.tensor(
                    [[1] * len(row) + [0] * (width - len(row)) for row in rows], device=device
                )
                hidden = backbone(input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state
                weights = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1)
                vectors.extend(nn.functional.normalize(pooled.float(), dim=-1).cpu().tolist())
        return vectors, sum(len(row) for row in ids)

    async def answer(self, request: EmbeddingsRequest) -> dict[str, Any]:
        """OpenAI's embeddings response for the request."""
        try:
            vectors, tokens = await asyncio.to_thread(self.embed, request.base_model, request.input)
        except ModelNotFoundError as exc:
            raise RequestError(404, f"The model '{request.model}' cannot be loaded: {exc}", param="model",
                               code="model_not_found") from None  # fmt: skip
        data = [{"object": "embedding", "index": i, "embedding": vector} for i, vector in enumerate(vectors)]
        return {"object": "list", "data": data, "model": request.model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}  # fmt: skip
