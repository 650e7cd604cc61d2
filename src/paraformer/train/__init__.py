"""Training: the loop, progressive-approximation strategies, tasks, hooks and evaluation."""

from paraformer.train.config import MODES, LoopConfig, TrainConfig
from paraformer.train.evaluate import EvalResult, evaluate
from paraformer.train.hooks import Hook
from paraformer.train.launch import resume, train

__all__ = ["MODES", "EvalResult", "Hook", "LoopConfig", "TrainConfig", "evaluate", "resume", "train"]
