"""Starting and resuming language-model runs: ``train_lm(cfg, out_dir)`` and ``resume_lm(out_dir)``.

The same loop as the image side (``Trainer``) runs them, with a ``LanguageModelingTask``,
the ``GradientStats`` hook (per-layer gradient norms for GFA and CascadeFlow) and, when
asked, deep supervision. The run folder also holds ``tokenizer.json``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from paraformer.atomic import atomic_write
from paraformer.checkpoint import load_config, load_train_state
from paraformer.config import ModelConfig
from paraformer.config_lm import LM_FAMILIES, LMConfig
from paraformer.data.text import TextCorpus, load_corpus
from paraformer.data.tokenizer import Tokenizer, tokenizer_from_json
from paraformer.errors import CheckpointError, ConfigError, DataError
from paraformer.models import build_model, count_params
from paraformer.registry import get_config
from paraformer.train.checkpointing import SavedRun, prepare_out_dir, read_run
from paraformer.train.devices import bf16_warning, resolve_device
from paraformer.train.grad_stats import GradientStats
from paraformer.train.hooks import Hook
from paraformer.train.launch import continue_run, place_model, resumed_config, start_processes
from paraformer.train.lm_config import DEFAULT_LM, LMDataInfo, LMTrainConfig
from paraformer.train.lm_task import LanguageModelingTask, require_one_window
from paraformer.train.loop import Trainer
from paraformer.train.setup import Setup, check_fits_in_memory
from paraformer.train.strategies import DeepSupervisionStrategy, StandardStrategy

Log = Callable[[str], None]
TOKENIZER_FILE = "tokenizer.json"
COMMAND = "paraformer lm train"


def require_lm_config(cfg: ModelConfig, what: str) -> None:
    if cfg.family not in LM_FAMILIES:
        raise ConfigError(
            f"{what} is a {cfg.family} model, not a language model; pick one of the lm/cascadeformer/"
            "paraformer_lm presets (see `paraformer list-models`), or use `paraformer train` for images."
        )


def read_lm_run(folder: str | Path) -> SavedRun:
    """A language-model run (or checkpoint) folder, validated; a vision run is a one-line error."""
    folder = Path(folder)
    model_cfg, _ = load_config(folder)
    if model_cfg.family not in LM_FAMILIES:
        raise CheckpointError(
            f"{folder} holds a {model_cfg.family} image model, not a language model; "
            "use `paraformer eval` / `paraformer info` for vision runs."
        )
    return read_run(folder, LMTrainConfig, LMDataInfo)


def find_tokenizer(folder: str | Path) -> Tokenizer:
    """The tokenizer of a run: ``tokenizer.json`` in the folder, or its run folder (for ``best/``)."""
    folder = Path(folder)
    for candidate in (folder / TOKENIZER_FILE, folder.parent / TOKENIZER_FILE):
        if candidate.is_file():
            return tokenizer_from_json(candidate.read_text(), str(candidate))
    raise CheckpointError(f"{folder / TOKENIZER_FILE} is missing; the run folder is incomplete.")


def write_tokenizer(folder: Path, tokenizer: Tokenizer) -> None:
    text = tokenizer.to_json()
    atomic_write(Path(folder) / TOKENIZER_FILE, lambda tmp: tmp.write_text(text))


def model_config_for(cfg: LMTrainConfig) -> ModelConfig:
    name = cfg.model or DEFAULT_LM
    model_cfg = get_config(name, **cfg.model_overrides)
    require_lm_config(model_cfg, f"model {name}")
    return model_cfg


def prepare_lm(
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
    require_lm_config(model_cfg, f"model {cfg.model or DEFAULT_LM}")
    seq_len = cfg.seq_len or model_cfg.context
    if seq_len > model_cfg.context:
        raise ConfigError(
            f"--seq-len {seq_len} is beyond the model's context of {model_cfg.context} tokens; "
            f"use --seq-len <= {model_cfg.context} or --set context={seq_len}."
        )
    if cfg.deep_supervision and is_branched_cfg(model_cfg):
        raise ConfigError(
            "--deep-supervision applies to sequential LMs; ParaFormer-LM already trains every prefix "
            "of branches (--mode fused or progressive)."
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
            f"{cfg.data} has changed since this run started (its sha256 differs); resuming needs the "
            "same text: restore the file or start a new run."
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
    elif model_cfg.vocab_size != vocab:
        raise DataError(f"the model has {model_cfg.vocab_size} tokens but the tokenizer {vocab}.")
    if (warning := bf16_warning(device, cfg.bf16)) is not None:
        log(warning)
    # An absolute path, so that `lm eval` finds the text from any folder.
    cfg = cfg.replace(model=cfg.model or DEFAULT_LM, seq_len=seq_len, data=corpus.path)
    info = data_info(corpus, cfg)
    task = LanguageModelingTask(
        corpus,
        seq_len,
        device,
        eval_batch_size=cfg.eval_batch_size,
        epoch_samples=cfg.eval_interval * cfg.batch_size if cfg.eval_interval else None,
        info=asdict(info),
    )
    return Setup(cfg, model.to(device), task, info, device)


def is_branched_cfg(cfg: ModelConfig) -> bool:
    return not isinstance(cfg, LMConfig)


def data_info(corpus: TextCorpus, cfg: LMTrainConfig) -> LMDataInfo:
    return LMDataInfo(
        dataset=corpus.name,
        path=corpus.path,
        sha256=corpus.sha256,
        tokenizer=corpus.tokenizer.kind,
        vocab_size=corpus.tokenizer.vocab_size,
        seq_len=cfg.seq_len,
        num_tokens={s: int(t.numel()) for s, t in corpus.tokens.items()},
        num_chars=dict(corpus.chars),
    )


def make_trainer(setup: Setup, out_dir: Path, log: Log, progress: bool, hooks: Sequence[Hook]) -> Trainer:
    cfg = setup.cfg
    # Per-layer statistics need every layer in this process: not under branch parallelism.
    stats = cfg.grad_stats and cfg.branch_parallel == 1
    all_hooks = list(hooks) + ([GradientStats()] if stats else [])  # after any gradient reduction
    strategy: StandardStrategy | None = None
    if cfg.deep_supervision:
        strategy = DeepSupervisionStrategy(setup.task.loss)
    return Trainer(
        setup, out_dir, log=log, progress=progress, hooks=all_hooks, strategy=strategy, command=COMMAND
    )


def train_lm(
    cfg: LMTrainConfig,
    out_dir: str | Path,
    *,
    log: Log = print,
    progress: bool = True,
    hooks: Sequence[Hook] = (),
    stop_after_epochs: int | None = None,
    model: nn.Module | None = None,
) -> dict[str, Any]:
    """Train a language model on a UTF-8 text file and write a run folder; return its summary.

    The folder holds config.json, model.safetensors, tokenizer.json, best/ (best
    validation loss), train_state.pt, metrics.jsonl (with per-layer gradient norms),
    curves.png and summary.json (validation and test loss, perplexity and bits per
    character). ``model`` continues training an existing model (healing after pruning).
    Ctrl-C saves the state; ``paraformer lm train --resume --out DIR`` continues exactly.
    """
    out_dir = Path(out_dir)
    ctx, log, progress = start_processes(cfg, log, progress)
    if ctx is None or ctx.is_main:
        prepare_out_dir(out_dir)
    setup, hooks = place_model(prepare_lm(cfg, log, progress, model=model), ctx, hooks, log)
    if ctx is None or ctx.is_main:
        write_tokenizer(out_dir, setup.task.corpus.tokenizer)
    trainer = make_trainer(setup, out_dir, log, progress, hooks)
    info = setup.data_info
    length = f"{trainer.epochs} epoch{'s' if trainer.epochs != 1 else ''}"
    if setup.cfg.max_steps:
        length = f"{setup.cfg.max_steps} steps ({length})"
    log(
        f"training {setup.cfg.model} ({count_params(setup.model):,} params, {trainer.strategy.name}) on "
        f"{info.dataset} ({info.tokenizer} tokens, vocabulary {info.vocab_size}): "
        + " / ".join(f"{info.num_tokens.get(s, 0):,} {s}" for s in ("train", "val", "test"))
        + f" tokens, windows of {info.seq_len}, {length}; run folder {out_dir}"
    )
    return trainer.run(stop_after_epochs)


def resume_lm(
    out_dir: str | Path,
    *,
    epochs: int | None = None,
    max_steps: int | None = None,
    log: Log = print,
    progress: bool = True,
    hooks: Sequence[Hook] = (),
    stop_after_epochs: int | None = None,
) -> dict[str, Any]:
    """Continue the language-model run in ``out_dir`` where it stopped (optionally for longer)."""
    out_dir = Path(out_dir)
    saved = read_lm_run(out_dir)
    state = load_train_state(out_dir)
    cfg = resumed_config(out_dir, saved.train_cfg, state, epochs, max_steps)
    ctx, log, progress = start_processes(cfg, log, progress)
    setup = prepare_lm(
        cfg,
        log,
        progress,
        model_cfg=saved.model_cfg,
        tokenizer=find_tokenizer(out_dir),
        sha256=saved.data.sha256,
    )
    setup, hooks = place_model(setup, ctx, hooks, log)
    return continue_run(make_trainer(setup, out_dir, log, progress, hooks), state, log, stop_after_epochs)


__all__ = ["find_tokenizer", "prepare_lm", "read_lm_run", "resume_lm", "train_lm"]
