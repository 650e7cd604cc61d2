"""One small render function per kind of results file: raw JSON record -> a section of BENCHMARKS.md.

``REGISTRY`` maps a kind to its function; ``benchmarks/report.py`` lays the sections out and
writes (or checks) the files.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from benchmarks.render import (
    accuracy,
    compression,
    continual,
    defaults,
    gfa_depth,
    gpu_recipe,
    latency,
    lm,
    prune,
    prune_depth,
    speed,
    taper,
)
from benchmarks.render.common import Section

Renderer = Callable[[dict[str, Any]], Section]

REGISTRY: dict[str, Renderer] = {
    "accuracy": accuracy.render,
    "defaults": defaults.render,
    "compression": compression.render,
    "continual": continual.render,
    "lm-compare": lm.render_compare,
    "lm-gfa": lm.render_gfa,
    "prune": prune.render,
    "taper": taper.render,
    "prune-depth": prune_depth.render,
    "gfa-depth": gfa_depth.render,
    "latency": latency.render,
    "gpu-recipe": gpu_recipe.render,
    "throughput": speed.render_throughput,
    "parallel-single": speed.render_single,
    "parallel-distributed": speed.render_distributed,
}
