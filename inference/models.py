"""Loaded models: base models from the registry (LRU), each with tenants' LoRA adapters on top (LRU).

All adapters of a base share its one loaded copy: peft injects LoRA layers once and a batch picks an
adapter per row (`adapter_names`), so mixed batches of several tenants' models run in one forward pass.
Only the batch thread calls `adapter_name` and the model; request threads call `tokenizer` only.
"""

import hashlib
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from core.settings import Settings
from core.storage import artifact_store
from worker.engine.policy import load_base_model, load_tokenizer
from worker.runconfig import base_model_dir

log = logging.getLogger(__name__)
BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed batch


class AdapterNotFound(Exception):
    pass


@dataclass
class LoadedBase:
    name: str
    directory: Path
    tokenizer: PreTrainedTokenizerBase
    model: PreTrainedModel | PeftModel
    context_length: int
    adapters: OrderedDict[str, str] = field(default_factory=OrderedDict)  # adapter uri -> peft name
    # The fast tokenizer is not safe to call from two threads at once.
    tokenizer_lock: threading.Lock = field(default_factory=threading.Lock)


def adapter_path(settings: Settings, uri: str) -> Path:
    """The local copy of the adapter the API named by its artifact key (fetched from the store when this
    host has none); AdapterNotFound unless it is a stored adapter folder."""
    try:
        path = artifact_store(settings).fetch(uri)
    except (ValueError, FileNotFoundError):  # not a key (`..`, an absolute path), or nothing stored there
        raise AdapterNotFound(f"no adapter stored at {uri}") from None
    if not (path / "adapter_config.json").is_file():
        raise AdapterNotFound(f"no adapter stored at {uri}")
    return path


def context_length(model: PreTrainedModel) -> int:
    return int(getattr(model.config, "max_position_embeddings", 2048))


class ModelCache:
    def __init__(self, settings: Settings, device: torch.device) -> None:
        self.settings = settings
        self.device = device
        self.bases: OrderedDict[str, LoadedBase] = OrderedDict()
        self.lock = threading.Lock()

    def base(self, name: str) -> LoadedBase:
        """The loaded base model `name` (a registry name; ModelNotFoundError when it is not one)."""
        with self.lock:
            if name in self.bases:
                self.bases.move_to_end(name)
                return self.bases[name]
            directory = base_model_dir(self.settings, name)
            model = load_base_model(directory, self.device)
            model.eval()  # type: ignore[no-untyped-call]
            loaded = LoadedBase(name, directory, load_tokenizer(directory), model, context_length(model))
            self.bases[name] = loaded
            while len(self.bases) > self.settings.inference_max_base_models:
                evicted, _ = self.bases.popitem(last=False)
                log.info("base model %s evicted", evicted)
            log.info("base model %s loaded from %s", name, directory)
            return loaded

    def adapter_name(self, base: LoadedBase, uri: str | None) -> str:
        """The peft name of adapter `uri` on `base`, loading it (and evicting the least recent) if needed."""
        if uri is None:
            return BASE_ADAPTER
        if uri in base.adapters:
            base.adapters.move_to_end(uri)
            return base.adapters[uri]
        path = adapter_path(self.settings, uri)
        name = "a" + hashlib.sha256(uri.encode()).hexdigest()[:16]
        if isinstance(base.model, PeftModel):
            base.model.load_adapter(str(path), adapter_name=name, is_trainable=False)
        else:
            base.model = PeftModel.from_pretrained(
                base.model, str(path), adapter_name=name, is_trainable=False
            )
        base.model.eval()
        base.adapters[uri] = name
        while len(base.adapters) > self.settings.inference_max_adapters:
            _, evicted = base.adapters.popitem(last=False)
            base.model.delete_adapter(evicted)
            log.info("adapter %s evicted from %s", evicted, base.name)
        return name
