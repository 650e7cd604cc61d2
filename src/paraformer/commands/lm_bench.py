"""Language models side by side: prefill, cached decoding and training speed.

``bench`` measures, for each model:

- ``prefill_ms``: one forward of a ``prompt_len``-token prompt at batch 1 into an empty
  key/value cache (time to first token, sampling aside);
- ``decode_ms_per_token``: then ``new_tokens`` tokens one at a time from the cache at
  batch 1, each step what ``generate`` does (next logits, greedy pick, append);
- ``decode_tokens_per_s``: the same at batch ``decode_batch`` (new tokens per second);
- ``train_tokens_per_s``: full training steps on ``(train_batch, seq_len)`` windows:
  forward, loss, backward, gradient clipping to 1.0 and an AdamW step, on a copy of the
  model. ``objective="lm"`` is the next-token loss of the whole model for every family;
  ``"fused"`` trains a ParaFormer-LM on the mean of its prefix losses, as `lm train`
  does by default (sequential models are unaffected);
- with ``uncached=True`` also ``decode_uncached_ms_per_token``: the batch-1 decode
  recomputing the context at every step (``generate(use_cache=False)``), and
  ``cache_speedup``, the median over rounds of uncached / cached decode time.

Models take turns round by round (every measurement of one model, then the next
model's, then the next round), so a change in machine load reaches every model alike;
each figure is the median over ``rounds``, after one warm-up round that is not counted,
and ``speedup`` is the median over rounds of each model's speed relative to the first
model's in the same round (> 1 is faster), which cancels load that drifts between rounds.
Decoding stays within the context (``prompt_len + new_tokens <= context``), so no
re-prefill (see ``CausalLMBase.generate``) falls inside the timed steps. The result also
records parameters, forward FLOPs per token at the full context, threads and the load
average before and after.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from paraformer.commands.flags import int_in, json_arg, parse_override, print_json, weights_arg
from paraformer.commands.runs import open_model
from paraformer.errors import ConfigError
from paraformer.models import build_model, get_config, modality_of
from paraformer.models.lm import CausalLMBase, sample_next
from paraformer.train.devices import resolve_device
from paraformer.train.objectives import make_objective

OBJECTIVES = ("lm", "fused")
# metric -> (column label, whether larger is faster); the table's ratios are speed-ups over the first model.
METRICS = {
    "prefill_ms": ("prefill ms", False),
    "decode_ms_per_token": ("decode ms/token", False),
    "decode_tokens_per_s": ("decode tokens/s (batch {decode_batch})", True),
    "train_tokens_per_s": ("train tokens/s", True),
    "decode_uncached_ms_per_token": ("uncached decode ms/token", False),
}


def bench(
    models: dict[str, nn.Module],
    *,
    prompt_len: int,
    new_tokens: int,
    decode_batch: int = 32,
    train_batch: int = 8,
    seq_len: int | None = None,
    rounds: int = 5,
    objective: str = "lm",
    uncached: bool = False,
    train_steps: int = 2,
    prefill_repeats: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """Speed of language models side by side: prefill of a prompt (ms), cached decoding at
    batch 1 (ms per token) and at ``decode_batch`` (tokens/s), and training (tokens/s of full
    AdamW steps). Models take turns round by round; each figure is the median over
    ``rounds``, with the speed relative to the first model measured within each round.

    ``models`` maps names to models; ``seq_len`` defaults to the smallest context. Returns
    ``{"settings", "load_average", "models": {name: {metric: median, "speedup": {...},
    "rounds": {metric: [...]}, ...}}}``.
    """
    if not models:
        raise ConfigError("bench needs at least one model.")
    for name, model in models.items():
        if getattr(model, "cfg", None) is None or modality_of(model.cfg) != "text":
            raise ConfigError(f"{name} is not a language model; bench compares language models only.")
    context = min(m.cfg.context for m in models.values())
    seq_len = context if seq_len is None else seq_len
    _require_ints(prompt_len=prompt_len, new_tokens=new_tokens, decode_batch=decode_batch)
    _require_ints(train_batch=train_batch, seq_len=seq_len, rounds=rounds, train_steps=train_steps)
    _require_ints(prefill_repeats=prefill_repeats)
    if prompt_len + new_tokens > context:
        raise ConfigError(
            f"prompt_len + new_tokens is {prompt_len + new_tokens}, past the smallest context ({context}); "
            "decoding is measured within the context: shorten the prompt or the new tokens."
        )
    if seq_len > context:
        raise ConfigError(f"seq_len {seq_len} is past the smallest context ({context}); use a shorter one.")
    if objective not in OBJECTIVES:
        raise ConfigError(f"objective must be one of {OBJECTIVES}, got {objective!r}.")

    gen = torch.Generator().manual_seed(seed)
    arms = []
    for name, model in models.items():
        device = next(model.parameters()).device
        vocab = model.cfg.vocab_size

        def ids(*shape: int, vocab: int = vocab, device: torch.device = device) -> torch.Tensor:
            return torch.randint(0, vocab, shape, generator=gen).to(device)

        trained = copy.deepcopy(model).train()
        opt = torch.optim.AdamW(
            trained.parameters(), lr=1e-4, **({"fused": True} if device.type == "cuda" else {})
        )
        window = ids(train_batch, seq_len + 1)
        arms.append(
            dict(
                name=name,
                model=model,
                sync=_synchronizer(device),
                prompt=ids(1, prompt_len),
                batch_prompt=ids(decode_batch, prompt_len),
                trained=trained,
                opt=opt,
                strategy=make_objective(
                    trained, "fused" if objective == "fused" else "joint", "uniform", _loss
                ),
                x=window[:, :-1],
                y=window[:, 1:],
            )
        )

    load_before = _load_average()
    samples: dict[str, dict[str, list[float]]] = {a["name"]: {} for a in arms}
    for rnd in range(rounds + 1):  # round 0 warms up
        for arm in arms:
            model, sync = arm["model"], arm["sync"]
            was_training = model.training
            model.eval()
            try:
                figures = {
                    "prefill_ms": 1e3 * _prefill(model, arm["prompt"], sync, prefill_repeats),
                    "decode_ms_per_token": 1e3 * _decode(model, arm["prompt"], new_tokens, sync, True),
                    "decode_tokens_per_s": decode_batch
                    / _decode(model, arm["batch_prompt"], new_tokens, sync, True),
                }
                if uncached:
                    figures["decode_uncached_ms_per_token"] = 1e3 * _decode(
                        model, arm["prompt"], new_tokens, sync, False
                    )
            finally:
                model.train(was_training)
            step_s = _train(arm, train_steps)
            figures["train_tokens_per_s"] = train_batch * seq_len / step_s
            if rnd:
                for key, value in figures.items():
                    samples[arm["name"]].setdefault(key, []).append(value)

    results = {}
    for arm in arms:
        model = arm["model"]
        row: dict[str, Any] = {
            "family": model.cfg.family,
            "params": model.num_params(),
            "flops_per_token": model.flops_per_token(),
            "context": model.cfg.context,
            "device": str(next(model.parameters()).device),
        }
        row.update({k: statistics.median(v) for k, v in samples[arm["name"]].items()})
        row["speedup"] = {
            k: _speedup(k, v, samples[arms[0]["name"]][k]) for k, v in samples[arm["name"]].items()
        }
        if uncached:  # how much faster the cache decodes, per round
            mine = samples[arm["name"]]
            row["cache_speedup"] = statistics.median(
                u / c
                for u, c in zip(
                    mine["decode_uncached_ms_per_token"], mine["decode_ms_per_token"], strict=True
                )
            )
        row["rounds"] = samples[arm["name"]]
        results[arm["name"]] = row
    return {
        "settings": dict(
            prompt_len=prompt_len,
            new_tokens=new_tokens,
            decode_batch=decode_batch,
            train_batch=train_batch,
            seq_len=seq_len,
            rounds=rounds,
            objective=objective,
            train_steps=train_steps,
            prefill_repeats=prefill_repeats,
            threads=torch.get_num_threads(),
            torch=torch.__version__,
        ),
        "load_average": {"before": load_before, "after": _load_average()},
        "models": results,
    }


@torch.no_grad()
def _prefill(model: CausalLMBase, prompt: torch.Tensor, sync: Callable[[], None], repeats: int) -> float:
    """Seconds of one prompt forward into an empty cache (mean of ``repeats``)."""
    cache = model.new_cache(prompt.shape[0])
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        cache.reset()
        model(prompt, cache=cache)
    sync()
    return (time.perf_counter() - start) / repeats


@torch.no_grad()
def _decode(
    model: CausalLMBase, prompt: torch.Tensor, steps: int, sync: Callable[[], None], use_cache: bool
) -> float:
    """Seconds per new token after the prompt (untimed prefill), as ``generate`` decodes greedily."""
    cache = model.new_cache(prompt.shape[0]) if use_cache else None
    idx = torch.cat([prompt, sample_next(model.next_logits(prompt, cache), 0, None, None)], dim=1)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        nxt = sample_next(model.next_logits(idx, cache), 0, None, None)  # (B, 1)
        idx = torch.cat([idx, nxt], dim=1)
    sync()
    return (time.perf_counter() - start) / steps


def _train(arm: dict[str, Any], steps: int) -> float:
    """Seconds per training step of the arm's copy of the model."""
    model, opt = arm["trained"], arm["opt"]

    def step(loss: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    arm["sync"]()
    start = time.perf_counter()
    for _ in range(steps):
        arm["strategy"].train_batch(model, arm["x"], arm["y"], "train", step)
    arm["sync"]()
    return (time.perf_counter() - start) / steps


def _speedup(metric: str, values: list[float], first: list[float]) -> float:
    """Median over rounds of this model's speed relative to the first model's in the same round."""
    larger_is_faster = METRICS[metric][1]
    return statistics.median(v / f if larger_is_faster else f / v for v, f in zip(values, first, strict=True))


def _loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))


def _synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def _load_average() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def _require_ints(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be an integer >= 1, got {value!r}.")


def format_table(result: dict[str, Any]) -> str:
    """The bench result as a text table: each median figure, and (x) the model's speed relative to the
    first model's, the median over rounds of the ratio within each round (> 1 is faster)."""
    rows = result["models"]
    names = list(rows)
    first = rows[names[0]]
    metrics = [m for m in METRICS if m in first]
    s = result["settings"]
    header = ["model", "params", "MFLOP/token", *(METRICS[m][0].format(**s) for m in metrics)]
    lines = [header]
    for name in names:
        row = rows[name]
        cells = [name, f"{row['params']:,}", f"{row['flops_per_token'] / 1e6:.2f}"]
        for m in metrics:
            cells.append(f"{row[m]:,.{3 if row[m] < 10 else 1}f} ({row['speedup'][m]:.2f}x)")
        lines.append(cells)
    if "cache_speedup" in first:
        lines[0].append("cache speed-up")
        for line, name in zip(lines[1:], names, strict=True):
            line.append(f"{rows[name]['cache_speedup']:.2f}x")
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in lines
    ]
    load = result["load_average"]
    text.append(
        f"(x) = speed relative to {names[0]} in the same round (> 1 is faster), median over rounds. "
        f"Medians of {s['rounds']} rounds; prompt "
        f"{s['prompt_len']}, {s['new_tokens']} new tokens, decode batch 1 and {s['decode_batch']}; training "
        f"{s['train_batch']} x {s['seq_len']} tokens, objective {s['objective']}; {s['threads']} thread(s); "
        + (f"load average {load['before'][0]:.2f} -> {load['after'][0]:.2f}." if load["before"] else "")
    )
    return "\n".join(text)


# ------------------------------------------------------------------------------ the verb


def bench_models(names: list[str], overrides: dict[str, Any], weights: str, device: str) -> dict[str, Any]:
    """name -> model: a run folder loads its weights, anything else is an LM preset (with ``overrides``)."""
    models = {}
    for name in names:
        if Path(name).is_dir():
            model = open_model(name, weights, device, task="text", command="lm bench")[1]
        elif os.sep in name:
            raise ConfigError(f"no run folder at {name}; give a run folder or an LM preset name.")
        else:
            cfg = get_config(name, **overrides)
            if modality_of(cfg) != "text":
                raise ConfigError(f"{name} is not a language-model preset; `lm bench` compares LMs.")
            model = build_model(cfg).to(resolve_device(device))
        key, n = name, 2
        while key in models:  # the same model twice: an A/A check of the measurement
            key, n = f"{name}#{n}", n + 1
        models[key] = model
    return models


def _bench(args: argparse.Namespace) -> int:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    models = bench_models(args.models, dict(args.set or []), args.weights, args.device)
    context = min(m.cfg.context for m in models.values())
    prompt_len = args.prompt_len or context // 2
    r = bench(
        models,
        prompt_len=prompt_len,
        new_tokens=args.new_tokens or context - prompt_len,
        decode_batch=args.decode_batch,
        train_batch=args.train_batch,
        seq_len=args.seq_len,
        rounds=args.rounds,
        objective=args.objective,
        uncached=args.uncached,
    )
    if args.json:
        print_json(r)
    else:
        print(format_table(r))
    return 0


def register(sub: Any, lm: Any) -> None:
    p = lm.add_parser(
        "bench", help="side-by-side speed: prefill, cached decoding, training", description=bench.__doc__
    )
    p.add_argument("models", nargs="+", metavar="RUN_OR_PRESET", help="run folders or LM preset names")
    p.add_argument(
        "--set",
        action="append",
        type=parse_override,
        metavar="FIELD=VALUE",
        help="override a preset's config field (repeatable; VALUE is JSON)",
    )
    weights_arg(p)
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument(
        "--rounds", type=int_in(1, 10_000), default=5, help="rounds, models taking turns (default 5)"
    )
    p.add_argument(
        "--prompt-len", type=int_in(1, 1 << 20), help="prompt tokens (default half the smallest context)"
    )
    p.add_argument(
        "--new-tokens", type=int_in(1, 1 << 20), help="decoded tokens (default: up to the smallest context)"
    )
    p.add_argument(
        "--decode-batch",
        type=int_in(1, 1 << 16),
        default=32,
        help="batch of the decode throughput (default 32)",
    )
    p.add_argument(
        "--train-batch", type=int_in(1, 1 << 16), default=8, help="windows per training step (default 8)"
    )
    p.add_argument(
        "--seq-len", type=int_in(1, 1 << 20), help="training window (default the smallest context)"
    )
    p.add_argument(
        "--objective", default="lm", choices=OBJECTIVES, help="training loss: lm (default) or fused prefixes"
    )
    p.add_argument("--uncached", action="store_true", help="also time decoding without the KV cache")
    p.add_argument("--threads", type=int_in(1, 4096), help="torch intra-op threads (default torch's)")
    json_arg(p)
    p.set_defaults(func=_bench)
