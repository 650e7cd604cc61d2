"""paraformer: depth-efficient Transformers (ParaFormer, its ViT twins, CascadeFormer and friends).

Models are built by name from one registry (``create_model``, ``list_models``); runs are
started and resumed by ``paraformer.launch.train`` and ``paraformer.launch.resume``, for
images and text alike; surgery (compress, expand, prune, export) is pure functions on models.
"""

from paraformer.config import LMConfig, ParaFormerConfig, ParaLMConfig, ViTConfig
from paraformer.continual import train_expansion, train_in_memory
from paraformer.errors import ParaformerError
from paraformer.models import (
    ParaFormer,
    ViT,
    build_model,
    config_from_dict,
    create_model,
    get_config,
    list_models,
    register_model,
)
from paraformer.parallel import merge_for_inference, prepare_for_inference
from paraformer.surgery import compress, evaluate_selections, expand, export_onnx, greedy_order, sweep
from paraformer.tasks.image import TrainConfig
from paraformer.tasks.text import LMTrainConfig

__version__ = "0.2.0"

__all__ = [
    "LMConfig",
    "LMTrainConfig",
    "ParaFormer",
    "ParaFormerConfig",
    "ParaLMConfig",
    "ParaformerError",
    "TrainConfig",
    "ViT",
    "ViTConfig",
    "build_model",
    "compress",
    "config_from_dict",
    "create_model",
    "evaluate_selections",
    "expand",
    "export_onnx",
    "get_config",
    "greedy_order",
    "list_models",
    "merge_for_inference",
    "prepare_for_inference",
    "register_model",
    "sweep",
    "train_expansion",
    "train_in_memory",
]
