"""One line naming the machine a benchmark ran on (CPU model, cores, threads, bf16, GPU)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from paraformer.train.devices import cpu_has_native_bf16


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def describe() -> str:
    bf16 = "native bf16" if cpu_has_native_bf16() else "no native bf16"
    threads = torch.get_num_threads()
    text = (
        f"{cpu_model()} ({platform.machine()}, {os.cpu_count()} cores, {bf16}), "
        f"{threads} torch thread{'s' if threads != 1 else ''}, torch {torch.__version__}"
    )
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name()}"
    if hasattr(os, "getloadavg"):  # how busy the shared machine was: it skews multi-process figures
        text += f", load average {os.getloadavg()[0]:.1f}"
    return text
