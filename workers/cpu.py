"""The CPU a timing or a precision choice depends on: its model name, its matrix flags, torch's threads.

Kept apart from :mod:`workers.runtime` so that both the plan and :mod:`workers.backend_choice` (which records
the CPU with each decision) read it without importing each other.
"""

from __future__ import annotations

import math
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path

import torch

# The CPU flags that decide which matrix kernels run (and so which precision pays and how fast a backend is).
MATRIX_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
                "amx_int8", "amx_fp16")
UNITS = {"bf16": ("avx512_bf16", "amx_bf16"), "fp16": ("avx512_fp16", "amx_fp16")}


def usable_cores() -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup v2 CPU limit (a container's
    limit, which ``os.cpu_count()`` does not see: it counts the whole node's cores)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


@dataclass(frozen=True)
class CpuFingerprint:
    """What a CPU timing depends on: the CPU's model name, its matrix flags, torch's threads and version."""

    model: str
    flags: tuple[str, ...] | None  # None: unknown (no /proc/cpuinfo), and low precision is trusted as asked
    threads: int
    torch: str

    def has_units(self, precision: str) -> bool:
        """Whether this CPU multiplies ``precision`` (bf16, fp16) matrices in hardware; without, they run
        several times slower than fp32."""
        return self.flags is None or any(flag in self.flags for flag in UNITS[precision])

    def as_record(self) -> dict:
        return {"model": self.model, "flags": None if self.flags is None else list(self.flags),
                "threads": self.threads, "torch": self.torch}


def cpu_fingerprint(cpuinfo: str | None = None) -> CpuFingerprint:
    """This CPU (or the one ``cpuinfo``, the text of a /proc/cpuinfo, describes) with torch's threads now."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return CpuFingerprint(platform.processor() or platform.machine(), None, torch.get_num_threads(),
                                  torch.__version__)
    name = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    flags = re.search(r"^(?:flags|Features)\s*:\s*(.*)$", cpuinfo, re.M)
    present = set(flags.group(1).split()) if flags else set()
    return CpuFingerprint(name.group(1).strip() if name else platform.machine(),
                          tuple(flag for flag in MATRIX_FLAGS if flag in present), torch.get_num_threads(),
                          torch.__version__)
