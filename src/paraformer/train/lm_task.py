"""Language modelling as a task of the training loop: windows of tokens, next-token loss.

A training *sample* is one window of ``seq_len + 1`` tokens starting at a uniformly
random position of the training split (drawn from the loop's seeded generator, so a
resumed run sees the same windows). An *epoch* of the loop is ``epoch_samples`` windows:
by default as many as fit in the split without overlap (about one pass over its
tokens), or ``eval_interval`` batches, so that evaluation, model selection and the
gradient trace happen every so many steps. Evaluation scores every token of a split
exactly once: consecutive windows of ``seq_len`` tokens (the last one shorter), each
starting with no context.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from paraformer.data.text import TextCorpus
from paraformer.errors import DataError
from paraformer.models import is_branched
from paraformer.train.devices import autocast

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

    def evaluate(
        self,
        model: nn.Module,
        split: str,
        *,
        prefixes: bool = False,
        bf16: bool = False,
        progress: bool = False,
    ) -> LMEvalResult:
        return evaluate_tokens(
            model,
            self.corpus.tokens[split],
            self.seq_len,
            num_chars=self.corpus.chars.get(split),
            batch_size=self.eval_batch_size,
            prefixes=prefixes,
            bf16=bf16,
            progress=progress,
            desc="validation" if split == "val" else split,
        )

    def info(self) -> dict[str, Any]:
        return dict(self._info)
