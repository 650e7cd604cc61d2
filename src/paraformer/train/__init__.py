"""Training: the loop, progressive-approximation strategies, schedules and evaluation."""

from paraformer.train.config import MODES, TrainConfig
from paraformer.train.evaluate import EvalResult, evaluate
from paraformer.train.loop import resume, train

__all__ = ["MODES", "EvalResult", "TrainConfig", "evaluate", "resume", "train"]
