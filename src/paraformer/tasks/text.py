"""Language modelling as a task: its run settings, text, token windows, loss and evaluation.

A training *sample* is one window of ``seq_len + 1`` tokens starting at a uniformly
random position of the training split (drawn from the loop's seeded generator, so a
resumed run sees the same windows). An *epoch* of the loop is ``epoch_samples`` windows:
by default as many as fit in the split without overlap (about one pass over its
tokens), or ``eval_interval`` batches, so that evaluation, model selection and the
gradient trace happen every so many steps. Evaluation scores every token of a split
exactly once: consecutive windows of ``seq_len`` tokens (the last one shorter), each
starting with no context.

The run records its text by name and content hash (``config.json["data"]``) and keeps
its tokenizer (``tokenizer.json``), so a run folder can be evaluated or resumed with
the text somewhere else (``--data PATH``): a file whose hash differs is refused.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from paraformer.config import ModelConfig, require
from paraformer.data.text import TextCorpus, load_corpus
from paraformer.data.tokenizer import KINDS, MIN_BPE_VOCAB, Tokenizer
from paraformer.errors import ConfigError, DataError
from paraformer.fields import check_fields
from paraformer.models import (
    build_model,
    check_input,
    default_model,
    get_config,
    is_branched,
    require_modality,
)
from paraformer.train.config import LoopConfig, option
from paraformer.train.devices import autocast, bf16_warning, check_fits_in_memory, resolve_device
from paraformer.train.task import Setup

Log = Callable[[str], None]
NAME = "text"
TOKENIZER_FILE = "tokenizer.json"
DEFAULT_LM = default_model(NAME)


@dataclass(frozen=True)
class LMTrainConfig(LoopConfig):
    """Everything a language-model run needs besides the text file's bytes.

    Loop defaults differ from the image side where language models want others:
    batches of 32 windows, AdamW weight decay 0.1, 2e-3 peak rate, gradient statistics on.
    """

    model: str | None = option(None, f"model preset (default {DEFAULT_LM}; see `paraformer list-models`)")
    batch_size: int = option(32, "training batch size (windows of --seq-len tokens)")
    lr: float = option(2e-3, "peak learning rate")
    weight_decay: float = option(0.1, "weight decay (not on norms, biases, embeddings)")
    epochs: int = option(1, "number of epochs (passes over the training tokens)")
    eval_batch_size: int = option(32, "batch size of evaluation (windows)")
    grad_stats: bool = option(True, "accumulate per-layer gradient norms (GFA, CascadeFlow pruning)")
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

    def __post_init__(self) -> None:
        super().__post_init__()
        require(bool(self.data.strip()), "a language-model run needs --data PATH, a UTF-8 text file.")
        require(
            self.tokenizer != "bpe" or MIN_BPE_VOCAB <= self.vocab_size <= 1 << 20,
            f"vocab_size must be >= {MIN_BPE_VOCAB} (and at most {1 << 20}) for byte-level BPE, "
            f"got {self.vocab_size!r}.",
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
    """The ``data`` section of a language-model run's ``config.json``.

    ``path`` is where the text was when the run started (a hint only); ``dataset`` (the
    file's name) and ``sha256`` identify it.
    """

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


LN2 = math.log(2.0)


@dataclass
class LMEvalResult:
    """Mean next-token loss (nats), perplexity and bits per character of one split."""

    loss: float
    num_tokens: int
    num_chars: int
    prefix_loss: list[float] = field(default_factory=list)

    @property
    def ppl(self) -> float:
        return math.exp(min(self.loss, 700.0))

    @property
    def bpc(self) -> float:
        return self.loss * self.num_tokens / LN2 / max(self.num_chars, 1)

    def metrics(self) -> dict[str, float | list[float]]:
        out: dict[str, float | list[float]] = {"loss": self.loss, "ppl": self.ppl, "bpc": self.bpc}
        if self.prefix_loss:
            out["loss_prefix"] = self.prefix_loss
            out["ppl_prefix"] = [math.exp(min(v, 700.0)) for v in self.prefix_loss]
        return out


def eval_windows(n: int, seq_len: int) -> list[tuple[int, int]]:
    """``(start, length)`` windows scoring tokens 1..n-1 of a split exactly once."""
    return [(s, min(seq_len, n - 1 - s)) for s in range(0, n - 1, seq_len)]


@torch.no_grad()
def evaluate_tokens(
    model: nn.Module,
    tokens: torch.Tensor,
    seq_len: int,
    *,
    num_chars: int | None = None,
    batch_size: int = 32,
    prefixes: bool = False,
    bf16: bool = False,
    progress: bool = False,
    desc: str = "eval",
) -> LMEvalResult:
    """Loss of ``model`` on every next token of ``tokens`` (windows of ``seq_len``)."""
    n = int(tokens.numel())
    if n < 2:
        raise DataError(f"cannot evaluate on the {desc} split: it has {n} token(s), at least 2 are needed.")
    device = next(model.parameters()).device
    use_prefixes = prefixes and is_branched(model)
    windows = eval_windows(n, seq_len)
    groups: dict[int, list[int]] = {}
    for s, length in windows:
        groups.setdefault(length, []).append(s)
    was_training = model.training
    model.eval()
    total, prefix_total = 0.0, None
    bar = tqdm(total=n - 1, desc=desc, unit="tok", leave=False, file=sys.stderr, disable=not progress)
    try:
        for length, starts in groups.items():
            offsets = torch.arange(length + 1)
            for i in range(0, len(starts), batch_size):
                rows = torch.tensor(starts[i : i + batch_size])[:, None] + offsets
                window = tokens[rows].to(device)  # (B, length + 1)
                x, y = window[:, :-1], window[:, 1:]
                with autocast(device, bf16):
                    if use_prefixes:
                        logits = model.prefix_logits(x).float()  # (N, B, T, V)
                        k, v = logits.shape[0], logits.shape[-1]
                        per = F.cross_entropy(
                            logits.reshape(-1, v), y.repeat(k, 1).reshape(-1), reduction="none"
                        )
                        sums = per.view(k, -1).sum(dim=1).cpu()
                        prefix_total = sums if prefix_total is None else prefix_total + sums
                        total += float(sums[-1])
                    else:
                        logits = model(x).float()
                        total += F.cross_entropy(
                            logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum"
                        ).item()
                bar.update(y.numel())
    finally:
        bar.close()
        model.train(was_training)
    count = n - 1
    result = LMEvalResult(total / count, count, num_chars if num_chars is not None else count)
    if prefix_total is not None:
        result.prefix_loss = [v / count for v in prefix_total.tolist()]
    return result


def require_one_window(corpus: TextCorpus, seq_len: int) -> int:
    """The number of training tokens, if they hold at least one window of ``seq_len + 1``."""
    n = corpus.num_tokens("train")
    if n < seq_len + 1:
        raise DataError(
            f"{corpus.name} has {n:,} training tokens, fewer than one context of {seq_len + 1}; "
            "use a longer text or a shorter --seq-len."
        )
    return n


class LanguageModelingTask:
    """Next-token prediction on a tokenized corpus; the loop's ``Task`` for language models."""

    name = NAME
    selection_metric = "loss"
    higher_is_better = False

    def __init__(
        self,
        corpus: TextCorpus,
        seq_len: int,
        device: torch.device,
        *,
        eval_batch_size: int = 32,
        epoch_samples: int | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        self.corpus = corpus
        self.seq_len = seq_len
        self.device = device
        self.eval_batch_size = eval_batch_size
        self._info = info or {}
        n = require_one_window(corpus, seq_len)
        self.starts = n - seq_len  # window starts 0..n-seq_len-1 all fit
        self.epoch_samples = epoch_samples or (n - 1) // seq_len

    def num_samples(self, split: str) -> int:
        if split == "train":
            return self.epoch_samples
        n = self.corpus.num_tokens(split)
        return len(eval_windows(n, self.seq_len)) if n >= 2 else 0

    def batch(self, indices: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(0, self.starts, (len(indices),), generator=generator)
        rows = starts[:, None] + torch.arange(self.seq_len + 1)
        window = self.corpus.tokens["train"][rows].to(self.device, non_blocking=True)  # (B, T + 1)
        return window[:, :-1], window[:, 1:]

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))

    def batch_metrics(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        return {}

    def evaluate(self, model: nn.Module, split: str, **options: bool) -> LMEvalResult:
        """Loss, perplexity and bits per character on a split; ``options`` as for the image task."""
        tokens, chars = self.corpus.tokens[split], self.corpus.chars.get(split)
        desc = "validation" if split == "val" else split
        return evaluate_tokens(
            model,
            tokens,
            self.seq_len,
            num_chars=chars,
            batch_size=self.eval_batch_size,
            desc=desc,
            **options,
        )

    def info(self) -> dict[str, Any]:
        return dict(self._info)

    def describe(self) -> str:
        """The text in one phrase, for the line printed when a run starts."""
        tok, counts = self.corpus.tokenizer, self.corpus.tokens
        sizes = " / ".join(
            f"{int(counts[s].numel()) if s in counts else 0:,} {s}" for s in ("train", "val", "test")
        )
        return (
            f"{self.corpus.name} ({tok.kind} tokens, vocabulary {tok.vocab_size}): {sizes} tokens, "
            f"windows of {self.seq_len}"
        )

    def artifacts(self) -> dict[str, str]:
        return {TOKENIZER_FILE: self.corpus.tokenizer.to_json()}


# ---------------------------------------------------------------------------- preparing a run


def model_config_for(cfg: LMTrainConfig) -> ModelConfig:
    name = cfg.model or DEFAULT_LM
    model_cfg = get_config(name, **cfg.model_overrides)
    require_modality(model_cfg, NAME, f"model {name}")
    return model_cfg


def find_text(recorded: Any, data_dir: str | None, folder: Path) -> str:
    """The text file a run trained on: its recorded name in ``data_dir``, else where the run found it.

    The caller checks that it is the same text (its sha256 must match the record).
    """
    path = str(Path(data_dir).expanduser() / recorded.dataset) if data_dir else recorded.path
    if not Path(path).is_file():
        where = f"in {data_dir}" if data_dir else f"at {recorded.path} any more"
        raise DataError(
            f"{folder} trained on {recorded.dataset}, which is not {where}; "
            "pass --data-dir DIR, the folder where that file is now."
        )
    return path


def prepare(
    cfg: LMTrainConfig,
    log: Log,
    progress: bool = True,
    *,
    model_cfg: ModelConfig | None = None,
    model: nn.Module | None = None,
    tokenizer: Tokenizer | None = None,
    sha256: str | None = None,
) -> Setup:
    """Tokenize the text and build the model (or take ``model``) for a language-model run.

    ``model_cfg`` (resume) rebuilds a saved model instead of the preset; ``tokenizer``
    reuses a run's tokenizer; ``sha256`` requires the text file to be unchanged.
    """
    device = resolve_device(cfg.device)
    if model is not None:
        model_cfg = model.cfg
    model_cfg = model_cfg or model_config_for(cfg)
    require_modality(model_cfg, NAME, f"model {cfg.model or DEFAULT_LM}")
    seq_len = cfg.seq_len or model_cfg.context
    if seq_len > model_cfg.context:
        raise ConfigError(
            f"--seq-len {seq_len} is beyond the model's context of {model_cfg.context} tokens; "
            f"use --seq-len <= {model_cfg.context} or --set context={seq_len}."
        )
    check_fits_in_memory(model_cfg, device)
    corpus = load_corpus(
        cfg.data,
        tokenizer=cfg.tokenizer,
        vocab_size=cfg.vocab_size,
        val_fraction=cfg.val_fraction,
        test_fraction=cfg.test_fraction,
        given=tokenizer,
        log=log,
    )
    if sha256 is not None and corpus.sha256 != sha256:
        raise DataError(
            f"{cfg.data} is not the text this run trained on (its sha256 differs); resuming needs the "
            "same text: restore the file, point --data-dir to its folder, or start a new run."
        )
    require_one_window(corpus, seq_len)
    if cfg.val_fraction > 0 and corpus.num_tokens("val") < 2:
        raise DataError(
            f"{corpus.name} is too short to hold out {cfg.val_fraction:.0%} for validation; "
            "use a longer text or --val-fraction 0."
        )
    vocab = corpus.tokenizer.vocab_size
    if model is None:
        if model_cfg.vocab_size != vocab:
            model_cfg = model_cfg.replace(vocab_size=vocab)
        torch.manual_seed(cfg.seed)
        model = build_model(model_cfg)
    else:
        check_input(model_cfg, cfg.model or model_cfg.family, vocab_size=vocab)
    if (warning := bf16_warning(device, cfg.bf16)) is not None:
        log(warning)
    cfg = cfg.replace(model=cfg.model or DEFAULT_LM, seq_len=seq_len, data=corpus.path)
    info = LMDataInfo(
        dataset=corpus.name,
        path=corpus.path,
        sha256=corpus.sha256,
        tokenizer=corpus.tokenizer.kind,
        vocab_size=corpus.tokenizer.vocab_size,
        seq_len=seq_len,
        num_tokens={s: int(t.numel()) for s, t in corpus.tokens.items()},
        num_chars=dict(corpus.chars),
    )
    task = LanguageModelingTask(
        corpus,
        seq_len,
        device,
        eval_batch_size=cfg.eval_batch_size,
        epoch_samples=cfg.eval_interval * cfg.batch_size if cfg.eval_interval else None,
        info=asdict(info),
    )
    return Setup(cfg, model.to(device), task, info, device)


# ---------------------------------------------------------------------------- finished runs


def reopen(saved: Any, tokenizer: Tokenizer, data_dir: str | None = None) -> TextCorpus:
    """A finished run's own text, split as in training (``data_dir``: the folder where it is now)."""
    cfg = saved.train_cfg
    corpus = load_corpus(
        find_text(saved.data, data_dir, saved.folder),
        given=tokenizer,
        val_fraction=cfg.val_fraction,
        test_fraction=cfg.test_fraction,
    )
    if corpus.sha256 != saved.data.sha256:
        raise DataError(
            f"{corpus.path} is not the text {saved.folder} trained on ({saved.data.dataset}: its sha256 "
            "differs); point --data-dir to that file's folder, or score another file whole with --data PATH."
        )
    return corpus
