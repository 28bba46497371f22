"""A run's peak memory (perf/peak_memory_mb): CUDA's allocator peak on a GPU, the resident peak on CPU."""

import contextlib
import resource
from pathlib import Path

import torch


def peak_memory_mb(device: torch.device) -> float:
    """The peak since reset_peak_memory() (the run's start), not the worker process's lifetime peak."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:  # Linux: VmHWM is the resident peak, and clear_refs (below) resets it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def reset_peak_memory() -> None:
    """Start a run's peak-memory count afresh: a worker process runs many jobs one after another."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    # "5" resets VmHWM to the current RSS; elsewhere (not Linux, not allowed) the peak stays the process's
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
