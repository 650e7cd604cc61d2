"""Errors that the CLI turns into a one-line message and exit code 2.

Every error raised on purpose by paraformer derives from ``ParaformerError``; its
message names what is wrong and how to fix it, in one sentence or two.
"""

from __future__ import annotations


class ParaformerError(Exception):
    """Base class: a user-facing problem with a one-line explanation."""


class ConfigError(ParaformerError, ValueError):
    """An invalid model or training configuration value."""


class ShapeError(ParaformerError, ValueError):
    """An input whose shape does not fit the model."""


class DataError(ParaformerError):
    """Missing, truncated or corrupt data files, or an unknown dataset."""


class CheckpointError(ParaformerError):
    """A missing, corrupt or inconsistent checkpoint / run directory."""


class TrainingError(ParaformerError):
    """Training cannot continue (for example the loss became NaN)."""
