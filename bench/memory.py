"""Peak memory of one measured run: CUDA max allocated on a GPU, the process's peak RSS on a CPU."""

from __future__ import annotations

from pathlib import Path

import torch

MIB = 1024**2
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _rss_field(name: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        return None
    return None


class PeakMemory:
    """`reset()` before a run, `peak_mib()` after it. On Linux writing 5 to clear_refs resets the peak RSS
    (VmHWM) to the current RSS, so each system's peak is its own even though all run in one process."""

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "cpu_peak_rss"

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            _CLEAR_REFS.write_text("5")
        except OSError:
            self.kind = "cpu_peak_rss_since_start"  # no reset here: the process's peak so far

    def peak_mib(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / MIB
        peak = _rss_field("VmHWM")
        if peak is None:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return peak / MIB
