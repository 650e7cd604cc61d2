"""paraformer: depth-efficient Transformers (ParaFormer and its sequential ViT twins)."""

from paraformer.config import ParaFormerConfig, ViTConfig, config_from_dict
from paraformer.errors import ParaformerError
from paraformer.models import ParaFormer, ViT, build_model
from paraformer.registry import create_model, get_config, list_models
from paraformer.surgery import compress, evaluate_selections, expand, export_onnx, greedy_order, sweep
from paraformer.train.expansion import train_expansion

__version__ = "0.1.0"

__all__ = [
    "ParaFormer",
    "ParaFormerConfig",
    "ParaformerError",
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
    "sweep",
    "train_expansion",
]
