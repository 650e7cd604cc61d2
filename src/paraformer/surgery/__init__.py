"""Surgery on trained models, as pure functions: each returns a new model (or figures) and
leaves the given model exactly as it was (weights, training flag, device).

- ``select``: ``compress`` (keep some branches), ``greedy_order``, ``evaluate_selections``
- ``expand``: ``expand`` (new zero-gated branches, new classes)
- ``sweep``: ``sweep`` (every first-k-branch model: accuracy, size, FLOPs, latency)
- ``prune``: ``prune_layers`` (remove layers or sub-layers of a sequential language model)
- ``scores``: which layers to prune (CascadeFlow and the heuristics)
- ``export``: ``export_onnx``
"""

from paraformer.surgery.expand import expand
from paraformer.surgery.export import EXPORT_FORMATS, check_export_format, export_onnx
from paraformer.surgery.prune import prune_layers
from paraformer.surgery.scores import METHODS, choose_removal
from paraformer.surgery.select import compress, evaluate_selections, greedy_order
from paraformer.surgery.sweep import latency_ms, sweep

__all__ = [
    "EXPORT_FORMATS",
    "METHODS",
    "check_export_format",
    "choose_removal",
    "compress",
    "evaluate_selections",
    "expand",
    "export_onnx",
    "greedy_order",
    "latency_ms",
    "prune_layers",
    "sweep",
]
