"""The settings of a language-model run (``config.json["train"]``) and its data record."""

from __future__ import annotations

from dataclasses import dataclass

from paraformer.config import require
from paraformer.data.tokenizer import KINDS, MIN_BPE_VOCAB
from paraformer.fields import check_fields
from paraformer.train.config import LoopConfig, option

DEFAULT_LM = "cascadeformer_small"


@dataclass(frozen=True)
class LMTrainConfig(LoopConfig):
    """Everything a language-model run needs besides the text file's bytes.

    Loop defaults differ from the image side where language models want others:
    batches of 32 windows, AdamW weight decay 0.1, 2e-3 peak rate.
    """

    model: str | None = option(None, f"model preset (default {DEFAULT_LM}; see `paraformer list-models`)")
    batch_size: int = option(32, "training batch size (windows of --seq-len tokens)")
    lr: float = option(2e-3, "peak learning rate")
    weight_decay: float = option(0.1, "weight decay (not on norms, biases, embeddings)")
    epochs: int = option(1, "number of epochs (passes over the training tokens)")
    eval_batch_size: int = option(32, "batch size of evaluation (windows)")
    eval_interval: int | None = option(
        None,
        "batches between evaluations (and checkpoints); default one pass over the training tokens",
        metavar="N",
    )
    data: str = option("", "UTF-8 text file to train on (required)", metavar="PATH")
    tokenizer: str = option("char", "char (one token per character) or bpe (byte-level BPE)", choices=KINDS)
    vocab_size: int = option(1024, "BPE vocabulary size (bpe only)")
    seq_len: int | None = option(
        None, "training window in tokens (default: the model's context)", metavar="T"
    )
    val_fraction: float = option(0.05, "fraction of the text (after train) held out for validation")
    test_fraction: float = option(0.05, "fraction of the text (at the end) held out for the final test")
    deep_supervision: bool = option(False, "a loss after every layer (sequential LMs; for GFA analysis)")
    grad_stats: bool = option(True, "accumulate per-layer gradient norms (GFA, CascadeFlow pruning)")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(bool(self.data.strip()), "a language-model run needs --data PATH, a UTF-8 text file.")
        require(
            self.tokenizer != "bpe" or self.vocab_size >= MIN_BPE_VOCAB,
            f"vocab_size must be >= {MIN_BPE_VOCAB} for byte-level BPE, got {self.vocab_size!r}.",
        )
        require(
            self.eval_interval is None or self.eval_interval >= 1,
            f"eval_interval must be >= 1, got {self.eval_interval!r}.",
        )
        require(self.seq_len is None or self.seq_len >= 1, f"seq_len must be >= 1, got {self.seq_len!r}.")
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            require(0 <= value < 0.5, f"{name} must be in [0, 0.5), got {value!r}.")


@dataclass(frozen=True)
class LMDataInfo:
    """The ``data`` section of a language-model run's ``config.json``."""

    dataset: str
    path: str
    sha256: str
    tokenizer: str
    vocab_size: int
    seq_len: int
    num_tokens: dict
    num_chars: dict

    def __post_init__(self) -> None:
        check_fields(self)
