"""Tensor memory on a CPU: the bytes of live tensor storages and their peak, the CPU analogue of
`torch.cuda.max_memory_allocated` (benchmarks/memory.py).

A process's resident peak (VmHWM) is mostly the runtime, the libraries and the allocator's caching, so
it says little about what a training step's tensors need. `TensorMemory` is a TorchDispatchMode that
sees every storage an aten op reads or writes, counts it once (by data pointer) while it is alive and
uncounts it when it dies (a weakref finalizer on the storage: torch keeps a storage's Python object
alive as long as the storage, so the finalizer fires when its memory is released). Storages alive when
the mode is entered (the loaded weights, the optimizer state) are found through the garbage collector
and counted from the start. torch.distributed._tools.mem_tracker.MemTracker would give per-category
peaks, but it refuses a module called twice in one tracked region, and `generate` calls the model once
per token.
"""

import gc
import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class TensorMemory(TorchDispatchMode):  # type: ignore[no-untyped-call]  # torch's untyped hooks
    """Live tensor bytes (`current`), their peak since entry or the last `reset_peak` (`peak`), and the
    peak of each named phase (`phases`, recorded by `end_phase`)."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.live: dict[int, int] = {}  # data pointer -> bytes
        self.current = 0
        self.peak = 0
        self.phases: dict[str, int] = {}

    def __enter__(self) -> "TensorMemory":
        gc.collect()
        for obj in gc.get_objects():
            if issubclass(type(obj), torch.Tensor):  # not isinstance: it reads __class__ of lazy modules
                self._track(obj)
        self.peak = self.current
        super().__enter__()  # type: ignore[no-untyped-call]
        return self

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        # inputs too: a tensor made outside aten (torch.from_numpy, a safetensors load) counts once used
        for value in tree_flatten((args, kwargs, out))[0]:
            if isinstance(value, torch.Tensor):
                self._track(value)
        return out

    def _track(self, tensor: torch.Tensor) -> None:
        plain = type(tensor) is torch.Tensor or isinstance(tensor, torch.nn.Parameter)
        if tensor.is_meta or not plain:
            return  # meta tensors hold nothing; tensor subclasses (DTensor) wrap storages seen on their own
        storage = tensor.untyped_storage()
        pointer, size = storage.data_ptr(), storage.nbytes()
        if size == 0:
            return
        known = self.live.get(pointer)
        if known is None:
            weakref.finalize(storage, self._release, pointer)
        elif known == size:
            return
        self.live[pointer] = size  # new, or resized in place
        self.current += size - (known or 0)
        self.peak = max(self.peak, self.current)

    def _release(self, pointer: int) -> None:
        self.current -= self.live.pop(pointer, 0)

    def reset_peak(self) -> None:
        self.peak = self.current

    def end_phase(self, name: str) -> None:
        """Record the peak since the last reset as phase `name` (the highest, when a phase recurs), and
        start the next phase's count."""
        self.phases[name] = max(self.phases.get(name, 0), self.peak)
        self.reset_peak()
