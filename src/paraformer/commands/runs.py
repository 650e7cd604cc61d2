"""Opening a finished run for a command: its settings, its model (best or last weights) and its data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from paraformer.checkpoint import SavedRun, checkpoint_folder, load_model, read_artifact
from paraformer.data import ImageDataset
from paraformer.data.text import TextCorpus, load_corpus
from paraformer.data.tokenizer import Tokenizer, tokenizer_from_json
from paraformer.errors import ConfigError, DataError
from paraformer.tasks import image, open_run, text
from paraformer.train.devices import resolve_device


def open_model(
    run_dir: str | Path,
    weights: str = "best",
    device: str = "cpu",
    *,
    task: str | None = None,
    kind: str | None = None,
    command: str = "",
) -> tuple[SavedRun, nn.Module, Path]:
    """The run's saved settings, its model (best or last weights) and the weights' folder.

    ``task``/``kind`` are what the command needs; a folder of another kind is refused
    in one line before any weights load.
    """
    run_dir = Path(run_dir)
    open_run(run_dir, task=task, kind=kind, command=command)
    folder = checkpoint_folder(run_dir, weights)
    saved = open_run(folder, task=task, kind=kind, command=command)
    model = load_model(folder, resolve_device(device))
    return saved, model.eval(), folder


def image_splits(
    saved: SavedRun, data_dir: str | None, splits: tuple[str, ...], *, progress: bool = False
) -> dict[str, ImageDataset]:
    return image.reopen(saved, data_dir, splits, progress=progress)


def run_tokenizer(folder: Path) -> Tokenizer:
    """The tokenizer a text run keeps (``tokenizer.json``), from the folder or its run folder."""
    return tokenizer_from_json(read_artifact(folder, text.TOKENIZER_FILE), str(folder / text.TOKENIZER_FILE))


def text_corpus(
    saved: SavedRun, folder: Path, *, data: str | None = None, data_dir: str | None = None
) -> TextCorpus:
    """The run's text (split as in training), or with ``data`` another file scored whole."""
    tokenizer = run_tokenizer(folder)
    if data is None:
        return text.reopen(saved, tokenizer, data_dir)
    return load_corpus(data, given=tokenizer, val_fraction=0.0, test_fraction=0.0)


def split_tokens(corpus: TextCorpus, split: str, whole_file: bool) -> tuple[torch.Tensor, int]:
    """A split's tokens and characters (another file is scored whole: its one split)."""
    if whole_file:
        n = corpus.num_tokens("train")
        if n < 2:
            raise DataError(
                f"{corpus.path} holds {n} token(s); scoring needs at least 2 (one to read, one to predict)."
            )
        return corpus.tokens["train"], corpus.chars["train"]
    if split not in ("val", "test"):
        raise ConfigError(f"split must be 'val' or 'test', got {split!r}.")
    if corpus.num_tokens(split) < 2:
        raise DataError(f"the run has no {split} split (its fraction was 0); use another --split.")
    return corpus.tokens[split], corpus.chars[split]


def describe_weights(folder: Path, run_dir: Path) -> str:
    return "best" if Path(folder) != Path(run_dir) else "last"


def eval_batch_size(saved: SavedRun) -> int:
    return saved.train_cfg.eval_batch_size if saved.train_cfg is not None else 256


__all__: list[Any] = [
    "describe_weights",
    "eval_batch_size",
    "image_splits",
    "open_model",
    "run_tokenizer",
    "split_tokens",
    "text_corpus",
]
