"""Training, for any task: the loop, objectives (progressive / fused / joint schedules and the
parts that change the loss or the data), the optimizer step, hooks, state and metrics.

Nothing here knows about images or text: a task (``paraformer.tasks``) hands the loop its
batches, loss and evaluation through the ``Task`` protocol. Starting and resuming runs is
``paraformer.launch`` (``paraformer.train`` and ``paraformer.resume`` for short).
"""

from paraformer.train.config import MODES, LoopConfig
from paraformer.train.hooks import Hook
from paraformer.train.loop import Trainer
from paraformer.train.task import Setup, Task

__all__ = ["MODES", "Hook", "LoopConfig", "Setup", "Task", "Trainer"]
