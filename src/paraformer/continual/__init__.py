"""Continual learning through the one trainer: class-incremental sequences, their methods and metrics.

- ``config``: ``ContinualConfig`` (the sequence, the method, its options) and ``METHODS``.
- ``methods``: one task of a method: the model trained, its data and objective parts, and
  what the method keeps (replay memory, teacher, experts, auxiliary heads).
- ``parts``: the auxiliary head and the gate learning-rate multiplier (``ObjectivePart``s).
- ``memory``: the replay memory (class-balanced or herding selection) and its bytes.
- ``predict``: class-IL / task-IL predictions, routing to task prefixes, weight aligning.
- ``sequence`` / ``run``: a sequence over seeds in a resumable run folder, its results.
- ``training``: ``train_in_memory`` / ``train_expansion`` train one model on in-memory images.
"""

from paraformer.continual.config import METHODS, ContinualConfig
from paraformer.continual.run import resume_continual, run_continual
from paraformer.continual.training import train_expansion, train_in_memory

__all__ = [
    "METHODS",
    "ContinualConfig",
    "resume_continual",
    "run_continual",
    "train_expansion",
    "train_in_memory",
]
