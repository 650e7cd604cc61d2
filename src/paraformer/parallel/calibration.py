"""Choosing the faster branch execution path by measuring it, once per shape, cached.

The stacked path wins where launches or small matmuls dominate (batch 1, GPUs) and
loses where plain GEMMs are already efficient (large CPU batches), so ``auto`` times
both paths on the actual input shape, precision and mode (training includes the
backward pass) and keeps the faster. Choices are cached in memory per stack and on
disk per machine (``$PARAFORMER_CACHE_DIR/branch-paths.json``), keyed by the device,
torch version, model shape and input, so a later run skips the measurement.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from paraformer.data.cache import cache_base
from paraformer.files import WriteError, atomic_write

CACHE_FILE = "branch-paths.json"
MARGIN = 0.10  # the stacked path must win by 10%: a tie, or noise on a busy machine, keeps the loop
REPEATS = 5


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def shape_key(stack: nn.Module, x: torch.Tensor, count: int) -> tuple[Any, ...]:
    """What the choice depends on: device, precision, mode, input shape and the stack's shape."""
    block = stack[0][0]
    amp = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else None
    training = stack.training and torch.is_grad_enabled()
    weights = tuple(block.attn.qkv.weight.shape) + tuple(block.mlp.net[0].weight.shape)
    return (
        x.device.type,
        device_name(x.device),
        torch.__version__,
        str(x.dtype),
        str(amp),
        training,
        tuple(x.shape),
        count,
        stack.num_branches,
        len(stack[0]),
        block.attn.heads,
        weights,
    )


def choose_path(stack: nn.Module, x: torch.Tensor, count: int) -> str:
    """The faster of "loop" and "stacked" for this call's shape (measured once, then cached)."""
    key = shape_key(stack, x, count)
    if key in stack.choices:
        return stack.choices[key]
    if torch.compiler.is_compiling():  # never time inside a traced graph; calibrate before compiling
        return "loop"
    cached = _disk_cache().get(repr(key))
    if cached in ("loop", "stacked"):
        stack.choices[key] = cached
        return cached
    timings = measure(stack, x, count)
    choice = "stacked" if timings["stacked"] < (1 - MARGIN) * timings["loop"] else "loop"
    stack.choices[key] = choice
    _save_choice(repr(key), choice, timings)
    return choice


def measure(stack: nn.Module, x: torch.Tensor, count: int) -> dict[str, float]:
    """Median seconds per call of each path (forward, plus backward when training), interleaved."""
    training = stack.training and torch.is_grad_enabled()
    params = [p for p in stack.parameters() if p.requires_grad]
    saved_path = stack.path
    times: dict[str, list[float]] = {"loop": [], "stacked": []}
    try:
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            for round_ in range(REPEATS + 1):
                for path in ("loop", "stacked"):
                    stack.path = path
                    _sync(x.device)
                    start = time.perf_counter()
                    out = stack.run(x.detach(), range(count))
                    total = sum(o.float().sum() for o in out)
                    if training and params:
                        torch.autograd.grad(total, params, allow_unused=True)  # no .grad written
                    _sync(x.device)
                    if round_:  # the first round warms up
                        times[path].append(time.perf_counter() - start)
    finally:
        stack.path = saved_path
    return {path: statistics.median(t) for path, t in times.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cache_file() -> Path | None:
    """Where measured choices are kept (None when caching is off)."""
    return _cache_path()


def _cache_path() -> Path | None:
    base = cache_base()
    return None if base is None else base / CACHE_FILE


def _disk_cache() -> dict[str, Any]:
    path = _cache_path()
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return (
        {k: v.get("choice") for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}
    )


def _save_choice(key: str, choice: str, timings: dict[str, float]) -> None:
    path = _cache_path()
    if path is None:
        return
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        data = {}
    data = data if isinstance(data, dict) else {}
    data[key] = {"choice": choice, "seconds": timings}
    text = json.dumps(data, indent=1)
    try:
        atomic_write(path, lambda tmp: tmp.write_text(text))
    except WriteError:
        pass  # only costs a new measurement next time
