"""Checkpoints and run folders: weights, configs and resume state on disk, and the run folder's
layout, ownership (one process at a time) and validation. Everything that reads or writes a
run folder goes through this package."""

from paraformer.checkpoint.run_folder import (
    BEST_DIR,
    METRICS_FILE,
    SUMMARY_FILE,
    RunFolder,
    SavedRun,
    checkpoint_folder,
    lock,
    open_run,
    prepare_out_dir,
    read_artifact,
    read_history,
    read_summary,
    run_header,
    weights_are_finite,
)
from paraformer.checkpoint.weights import (
    CONFIG_FILE,
    MODEL_FILE,
    TRAIN_STATE_FILE,
    load_config,
    load_model,
    load_state_into,
    load_train_state,
    save_model,
    save_train_state,
    save_weights,
)

__all__ = [
    "BEST_DIR",
    "CONFIG_FILE",
    "METRICS_FILE",
    "MODEL_FILE",
    "SUMMARY_FILE",
    "TRAIN_STATE_FILE",
    "RunFolder",
    "SavedRun",
    "checkpoint_folder",
    "load_config",
    "load_model",
    "load_state_into",
    "load_train_state",
    "lock",
    "open_run",
    "prepare_out_dir",
    "read_artifact",
    "read_history",
    "read_summary",
    "run_header",
    "save_model",
    "save_train_state",
    "save_weights",
    "weights_are_finite",
]
