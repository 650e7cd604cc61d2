"""A RandAugment-like policy on a whole batch, in vectorised torch.

Every sample draws ``num_ops`` operations (with replacement) from a fixed list and
a random sign for each; the magnitude ``M`` (0-30) sets their strength. Each
operation runs once per round on the samples that drew it, so there is no Python
loop over samples. Images are floats in ``[0, 1]`` at the model's input size, so
geometric strengths are fractions of the real input (30% translation at ``M=30``).
All random numbers are drawn on the CPU from the given generator, which makes the
result a pure function of the generator state.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

MAX_MAGNITUDE = 30
MAX_STRONG_OPS = 8  # operations per image; RandAugment uses 1-3, more only destroys the image
FILL = 0.5  # the value that geometric ops shift in from outside the image

Op = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]  # (x (n,C,H,W), sign (n,), m in [0,1])


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return 0.299 * r + 0.587 * g + 0.114 * b  # (n, 1, H, W)


def _blend(x: torch.Tensor, degenerate: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``degenerate + factor * (x - degenerate)``: factor 1 keeps x, 0 gives the degenerate image."""
    return (degenerate + factor.view(-1, 1, 1, 1) * (x - degenerate)).clamp(0, 1)


def _factor(sign: torch.Tensor, m: float) -> torch.Tensor:
    return 1.0 + sign * 0.9 * m


def identity(x: torch.Tensor, sign: torch.Tensor, m: float) -> torch.Tensor:
    return x


def brightness(x: torch.Tensor, sign: torch.Tensor, m: float) -> torch.Tensor:
    return _blend(x, torch.zeros_like(x), _factor(sign, m))


def contrast(x: torch.Tensor, sign: torch.Tensor, m: float) -> torch.Tensor:
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(x, mean.expand_as(x), _factor(sign, m))


def color(x: torch.Tensor, sign: torch.Tensor, m: float) -> torch.Tensor:
    return _blend(x, _gray(x).expand_as(x), _factor(sign, m))


def sharpness(x: torch.Tensor, sign: torch.Tensor, m: float) -> torch.Tensor:
    c = x.shape[1]
    kernel = torch.ones(3, 3, dtype=x.dtype, device=x.device)
    kernel[1, 1] = 5.0
    kernel = (kernel / kernel.sum()).expand(c, 1, 3, 3)
    smooth = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=c)
    return _blend(x, smooth, _factor(sign, m))


def posterize(x: torch.Tensor, sign: torch.Tensor, m: float) -> torch.Tensor:
    step = 2.0 ** round(4 * m)  # keep 8 - round(4m) bits
    return torch.floor(torch.round(x * 255) / step) * step / 255


def solarize(x: torch.Tensor, sign: torch.Tensor, m: float) -> torch.Tensor:
    threshold = (1.0 - m) * 256 / 255  # m = 0 inverts nothing, m = 1 inverts everything
    return torch.where(x >= threshold, 1.0 - x, x)


def autocontrast(x: torch.Tensor, sign: torch.Tensor, m: float) -> torch.Tensor:
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (x - lo) / span.clamp_min(1e-12), x)


def equalize(x: torch.Tensor, sign: torch.Tensor, m: float) -> torch.Tensor:
    """Histogram equalisation per image and channel over 256 levels."""
    n, c, h, w = x.shape
    levels = torch.round(x * 255).long().clamp(0, 255).view(n * c, h * w)
    hist = torch.zeros(n * c, 256, dtype=x.dtype, device=x.device)
    hist.scatter_add_(1, levels, torch.ones_like(levels, dtype=x.dtype))
    cdf = hist.cumsum(1)
    first = torch.where(hist > 0, cdf, torch.full_like(cdf, float(h * w))).amin(1, keepdim=True)
    denom = float(h * w) - first
    lut = torch.where(denom > 0, (cdf - first) / denom.clamp_min(1), torch.arange(256, device=x.device) / 255)
    return lut.gather(1, levels).view(n, c, h, w).to(x.dtype)


def _affine(x: torch.Tensor, matrix: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Sample ``x`` at ``matrix @ p + shift`` for each output pixel ``p`` (pixel units, centred)."""
    n, _, h, w = x.shape
    to_norm = torch.tensor([2.0 / w, 2.0 / h], dtype=x.dtype, device=x.device)
    theta = torch.empty(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, :, :2] = to_norm.view(1, 2, 1) * matrix / to_norm.view(1, 1, 2)
    theta[:, :, 2] = to_norm * shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x - FILL, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out + FILL


def _eye(sign: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.eye(2, dtype=dtype, device=sign.device).repeat(len(sign), 1, 1)


def rotate(x: torch.Tensor, sign: torch.Tensor, m: float) -> torch.Tensor:
    angle = sign * math.radians(30.0 * m)
    cos, sin = torch.cos(angle), torch.sin(angle)
    matrix = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], 1).to(x.dtype)
    return _affine(x, matrix, torch.zeros(len(x), 2, dtype=x.dtype, device=x.device))


def _shear(axis: int) -> Op:
    def op(x: torch.Tensor, sign: torch.Tensor, m: float) -> torch.Tensor:
        matrix = _eye(sign, x.dtype)
        matrix[:, axis, 1 - axis] = sign * 0.3 * m
        return _affine(x, matrix, torch.zeros(len(x), 2, dtype=x.dtype, device=x.device))

    op.__name__ = f"shear_{'xy'[axis]}"
    return op


def _translate(axis: int) -> Op:
    def op(x: torch.Tensor, sign: torch.Tensor, m: float) -> torch.Tensor:
        size = x.shape[3] if axis == 0 else x.shape[2]
        shift = torch.zeros(len(x), 2, dtype=x.dtype, device=x.device)
        shift[:, axis] = sign * 0.3 * m * size
        return _affine(x, _eye(sign, x.dtype), shift)

    op.__name__ = f"translate_{'xy'[axis]}"
    return op


COLOR_OPS: tuple[Op, ...] = (
    identity,
    brightness,
    contrast,
    color,
    sharpness,
    posterize,
    solarize,
    autocontrast,
    equalize,
)
GEOMETRIC_OPS: tuple[Op, ...] = (rotate, _shear(0), _shear(1), _translate(0), _translate(1))


def ops_for(channels: int) -> tuple[Op, ...]:
    """The operations that make sense for images with this many channels."""
    ops = COLOR_OPS + GEOMETRIC_OPS
    return ops if channels == 3 else tuple(op for op in ops if op is not color)


def rand_augment(
    x: torch.Tensor, num_ops: int, magnitude: int, generator: torch.Generator | None
) -> torch.Tensor:
    """Apply ``num_ops`` random operations of strength ``magnitude`` (0-30) to each image of ``x``."""
    ops = ops_for(x.shape[1])
    m = magnitude / MAX_MAGNITUDE
    n = x.shape[0]
    x = x.clone()
    for _ in range(num_ops):
        choice = torch.randint(len(ops), (n,), generator=generator)
        sign = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
        for k, op in enumerate(ops):
            idx = torch.nonzero(choice == k).flatten()
            if op is identity or len(idx) == 0:
                continue
            dev_idx = idx.to(x.device)
            x[dev_idx] = op(x[dev_idx], sign[idx].to(device=x.device, dtype=x.dtype), m).clamp(0, 1)
    return x
