"""Device and precision: which device a run uses, and whether bf16 pays off there."""

from __future__ import annotations

import os
import re
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from paraformer.errors import ConfigError

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda)(:(\d+))?$")
MAX_DEVICE_INDEX = 1 << 16  # larger indices overflow torch's device parser


def available_devices() -> list[str]:
    """The device names this build of torch can use here, e.g. ``['cpu', 'cuda:0']``."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        names.append("mps")
    return names


def check_device_name(name: str) -> None:
    """Reject a malformed device name (availability is checked by ``resolve_device``)."""
    match = _DEVICE.match(name) if isinstance(name, str) else None
    too_large = match is not None and match.group(3) is not None and int(match.group(3)) >= MAX_DEVICE_INDEX
    if match is None or too_large or (match.group(2) and match.group(1) in ("auto", "cpu")):
        raise ConfigError(
            f"device must be auto, cpu, cuda, cuda:N or mps, got {name!r} "
            f"(available here: {', '.join(available_devices())})."
        )


def resolve_device(name: str) -> torch.device:
    """The ``torch.device`` for ``name``; an unavailable device is a one-line error."""
    check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    available = available_devices()
    ok = device.type == "cpu" or (
        device.type == "cuda"
        and torch.cuda.is_available()
        and (device.index is None or device.index < torch.cuda.device_count())
    )
    ok = ok or (device.type == "mps" and "mps" in available)
    if not ok:
        raise ConfigError(
            f"device {name} is not available in this build of torch on this machine; "
            f"available: {', '.join(available)}."
        )
    return device


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX-512 BF16 or AMX).

    Without it, bf16 matmuls are emulated and run tens of times slower than fp32.
    """
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    try:
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    except RuntimeError:  # private torch API: assume native if it cannot tell
        return True


def bf16_warning(device: torch.device, bf16: bool) -> str | None:
    """A warning to print when bf16 autocast would be emulated (and slow) on this device."""
    if bf16 and device.type == "cpu" and not cpu_has_native_bf16():
        return (
            "warning: this CPU has no native bf16 (no AVX-512 BF16 or AMX), so --bf16 emulates it "
            "and trains many times slower than fp32; drop --bf16 here."
        )
    return None


def autocast(device: torch.device, bf16: bool) -> AbstractContextManager:
    """bf16 autocast on ``device`` when asked, else a no-op context."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


def compile_model(model: torch.nn.Module, *, inference: bool = False) -> None:
    """``torch.compile`` the model in place: its forward and, for branched models, ``prefix_logits``.

    Each branch count of the progressive schedule is its own graph, so the recompile
    limit is raised to hold them all. For inference on a GPU the compiled graphs are
    also captured as CUDA graphs ("reduce-overhead"): batch-1 inference is bound by
    kernel launches there.
    """
    import torch._dynamo

    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    device = next(model.parameters()).device
    mode = "reduce-overhead" if inference and device.type == "cuda" else None
    model.compile(mode=mode)
    if hasattr(model, "prefix_logits"):
        # An instance attribute, so it is not saved and the class stays uncompiled.
        model.prefix_logits = torch.compile(model.prefix_logits, mode=mode)


BYTES_PER_PARAM_TRAINING = 16  # fp32 weights, gradients and two Adam moments


def estimate_params(cfg: Any) -> int:
    """Parameters of the blocks (the bulk of any model here), from its config without building it."""
    dim = getattr(cfg, "dim", 0)
    mlp = getattr(cfg, "mlp_dim", None) or max(getattr(cfg, "mlp_dims", (0,)) or (0,))
    return cfg.num_layers * (4 * dim * dim + 2 * dim * mlp)


def check_fits_in_memory(cfg: Any, device: torch.device) -> None:
    """Refuse a model whose training state cannot fit in this machine's memory, before building it."""
    params = estimate_params(cfg)
    need = params * BYTES_PER_PARAM_TRAINING
    if device.type == "cuda":
        have = torch.cuda.get_device_properties(device).total_memory
    else:
        try:
            have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return
    if need > have:
        raise ConfigError(
            f"this model has about {params / 1e9:.2f}B parameters and needs about {need / 2**30:.0f} GiB "
            f"to train, more than the {have / 2**30:.0f} GiB of {device.type} memory here; make it smaller."
        )
