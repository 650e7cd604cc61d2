"""``paraformer lm train | eval | sample | gfa | prune | bench``: the language-model commands.

A thin layer like ``cli.py``: each command calls one documented function and prints a
one-line summary (or JSON). ``cli.py`` passes in its flag helpers, so this module does
not import it back.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from paraformer.errors import ConfigError, ParaformerError

RESUMABLE_FIELDS = ("epochs", "max_steps")
EXIT_INTERRUPTED = 130


def _train(args: argparse.Namespace) -> int:
    from paraformer.train.lm_config import LMTrainConfig
    from paraformer.train.lm_launch import resume_lm, train_lm

    given = {name: getattr(args, name) for name in args.config_fields if getattr(args, name) is not None}
    overrides = dict(args.set or [])
    if args.resume:
        if args.out is None:
            raise ParaformerError("--resume needs --out DIR, the folder of the run to continue.")
        extra = [f"--{k.replace('_', '-')}" for k in sorted(set(given) - set(RESUMABLE_FIELDS))]
        extra += ["--set"] if overrides else []
        if extra:
            raise ParaformerError(
                f"--resume continues the run with its saved settings; drop {', '.join(extra)} "
                "(only --epochs and --max-steps may change) or start a new run with another --out."
            )
        summary = resume_lm(args.out, progress=not args.no_progress, **given)
    else:
        cfg = LMTrainConfig.from_dict({**given, "model_overrides": overrides})
        stamp = time.strftime("%Y%m%d-%H%M%S")
        args.out = args.out or Path("runs") / f"lm-{cfg.model or 'default'}-{Path(cfg.data).stem}-{stamp}"
        summary = train_lm(cfg, args.out, progress=not args.no_progress)
    if summary.get("interrupted"):
        return EXIT_INTERRUPTED
    if summary.get("epochs_completed") and os.environ.get("RANK", "0") in ("", "0"):  # rank 0 reports
        print(summary_line(summary, args.out))
    return 0


def summary_line(s: dict[str, Any], out: Path) -> str:
    """The one line printed at the end of an LM run."""
    parts = [f"done: {s['model']} ({s['mode']}) {s['num_params']:,} params, {s['steps']} steps"]
    for split, name in (("val", "validation"), ("test", "test")):
        if isinstance(s.get(f"{split}_loss"), float):
            parts.append(
                f"{name} loss {s[f'{split}_loss']:.4f} (perplexity {s[f'{split}_ppl']:.2f}, "
                f"{s[f'{split}_bpc']:.3f} bits/char)"
            )
    parts.append(f"{s['train_seconds']:.0f}s training; run in {out}")
    return "; ".join(parts)


def _eval(args: argparse.Namespace) -> int:
    from paraformer.lm_runs import evaluate_lm_run

    r = evaluate_lm_run(
        args.run_dir,
        split=args.split,
        weights=args.weights,
        data=args.data,
        device=args.device,
        progress=not args.json,
    )
    if args.json:
        print(json.dumps(r))
        return 0
    print(
        f"{r['run']} ({r['weights']} weights): {r['split']} loss {r['loss']:.4f}, perplexity {r['ppl']:.2f}, "
        f"{r['bpc']:.3f} bits/char on {r['num_tokens']:,} tokens; {r['num_params']:,} params"
    )
    if r.get("ppl_prefix"):
        print(
            "perplexity with the first k branches: "
            + "  ".join(f"k={k}: {p:.2f}" for k, p in enumerate(r["ppl_prefix"], start=1))
        )
    return 0


def _sample(args: argparse.Namespace) -> int:
    from paraformer.lm_runs import sample_run

    if args.top_k < 0:
        raise ConfigError(f"--top-k must be >= 0 (0 samples among all tokens), got {args.top_k}.")
    text = sample_run(
        args.run_dir,
        prompt=args.prompt,
        tokens=args.tokens,
        temperature=args.temperature,
        top_k=args.top_k if args.top_k > 0 else None,
        seed=args.seed,
        weights=args.weights,
        device=args.device,
        use_cache=not args.no_cache,
    )
    print(text)
    return 0


def _gfa(args: argparse.Namespace) -> int:
    from paraformer.lm_runs import gfa_run

    r = gfa_run(
        args.run_dir, out=args.out, tokens=args.tokens, importance=not args.no_importance, device=args.device
    )
    if args.json:
        print(json.dumps(r))
        return 0
    print(
        f"{'layer':>6} {'fan-in':>7} {'grad norm':>10}"
        + (f" {'skip +loss':>10}" if "importance" in r else "")
    )
    for i, name in enumerate(r["layers"]):
        row = f"{name:>6} {r['theory'][i]:7.1f} {r['grad_norm'][i]:10.4f}"
        if "importance" in r:
            row += f" {r['importance'][i]:10.4f}"
        print(row)
    corr = "; ".join(
        f"{k}: Spearman {v['spearman']:+.2f}, Pearson {v['pearson']:+.2f}"
        for k, v in r["correlations"].items()
    )
    print(f"correlations ({r['steps']} steps): {corr}")
    print(f"wrote gfa.json and gfa.png to {args.out or args.run_dir}")
    return 0


def _prune(args: argparse.Namespace) -> int:
    from paraformer.lm_runs import prune_run

    r = prune_run(
        args.run_dir,
        remove=args.remove,
        method=args.method,
        out=args.out,
        seed=args.seed,
        calib_windows=args.calib_windows,
        heal_steps=args.heal_steps,
        heal_lr=args.heal_lr,
        weights=args.weights,
        device=args.device,
        progress=not args.no_progress,
    )
    what = f"layers {r['removed_layers']}" if r["removed_layers"] else "no whole layer"
    if r["removed_attn"] or r["removed_mlp"]:
        what += f", attention of {r['removed_attn']}, FFN of {r['removed_mlp']}"
    healed = f"; healed {r['heal_steps']} steps" if r["heal_steps"] else ""
    print(
        f"pruned {args.run_dir} by {r['method']}: removed {what} ({r['params_removed']:,} of "
        f"{r['params_before']:,} params){healed}; wrote {args.out} "
        f"(evaluate with `paraformer lm eval {args.out}`)"
    )
    return 0


def _bench(args: argparse.Namespace) -> int:
    import torch

    from paraformer.analysis.lm_speed import bench, format_table

    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}.")
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
    print(json.dumps(r) if args.json else format_table(r))
    return 0


def bench_models(names: list[str], overrides: dict[str, Any], weights: str, device: str) -> dict[str, Any]:
    """name -> model: a run folder loads its weights, anything else is an LM preset (with ``overrides``)."""
    from paraformer.config_lm import LM_FAMILIES
    from paraformer.lm_runs import open_run
    from paraformer.models import build_model
    from paraformer.registry import get_config
    from paraformer.train.devices import resolve_device

    models = {}
    for name in names:
        if Path(name).is_dir():
            model = open_run(name, weights, device)[1]
        elif os.sep in name:
            raise ConfigError(f"no run folder at {name}; give a run folder or an LM preset name.")
        else:
            cfg = get_config(name, **overrides)
            if cfg.family not in LM_FAMILIES:
                raise ConfigError(f"{name} is not a language-model preset; `lm bench` compares LMs.")
            model = build_model(cfg).to(resolve_device(device))
        key, n = name, 2
        while key in models:  # the same model twice: an A/A check of the measurement
            key, n = f"{name}#{n}", n + 1
        models[key] = model
    return models


def add_lm_parser(
    sub: Any, config_flags: Callable[[argparse.ArgumentParser, type], list[str]], parse_override: Callable
) -> None:
    """Add ``lm`` and its sub-commands to the ``paraformer`` parser."""
    from paraformer.analysis.layer_scores import METHODS
    from paraformer.analysis.lm_speed import OBJECTIVES, bench
    from paraformer.lm_runs import evaluate_lm_run, gfa_run, prune_run, sample_run
    from paraformer.train.lm_config import LMTrainConfig
    from paraformer.train.lm_launch import train_lm

    lm = sub.add_parser(
        "lm",
        help="language models: train | eval | sample | gfa | prune | bench",
        description="Language models: CascadeFormer, uniform, widening and ParaFormer-LM.",
    )
    cmds = lm.add_subparsers(dest="lm_command", required=True, parser_class=type(lm))

    p = cmds.add_parser(
        "train", help="train a language model on a UTF-8 text file", description=train_lm.__doc__
    )
    fields = config_flags(p, LMTrainConfig)
    p.add_argument(
        "--set",
        action="append",
        type=parse_override,
        metavar="FIELD=VALUE",
        help="override a model config field, e.g. --set dim=192 (repeatable; VALUE is JSON)",
    )
    p.add_argument("--out", type=Path, help="run folder (default runs/lm-<model>-<text>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_train, config_fields=fields)

    def run_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("run_dir", type=Path, help="a run folder written by `paraformer lm train`")
        p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")

    def weights_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--weights", default="best", choices=("best", "last"), help="best-validation or last weights"
        )

    p = cmds.add_parser(
        "eval", help="loss, perplexity and bits/char of a run", description=evaluate_lm_run.__doc__
    )
    run_arg(p)
    weights_arg(p)
    p.add_argument("--split", default="test", choices=("test", "val"))
    p.add_argument("--data", help="evaluate on the whole of another UTF-8 file instead")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_eval)

    p = cmds.add_parser("sample", help="generate text from a run", description=sample_run.__doc__)
    run_arg(p)
    weights_arg(p)
    p.add_argument("--prompt", default="\n", help="text to continue (default a newline)")
    p.add_argument("--tokens", type=int, default=200, help="new tokens to generate (default 200)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default 0.8)")
    p.add_argument(
        "--top-k", type=int, default=40, help="sample among the k most likely, 0 = all (default 40)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--no-cache", action="store_true", help="recompute the context for every token (no KV cache)"
    )
    p.set_defaults(func=_sample)

    p = cmds.add_parser(
        "gfa", help="gradient fan-in analysis of a run (gfa.png)", description=gfa_run.__doc__
    )
    run_arg(p)
    p.add_argument("--out", type=Path, help="folder for gfa.json and gfa.png (default the run folder)")
    p.add_argument("--tokens", type=int, default=32768, help="validation tokens for skip importance")
    p.add_argument("--no-importance", action="store_true", help="skip the post-hoc layer-skipping evaluation")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_gfa)

    p = cmds.add_parser(
        "prune", help="remove K layers (CascadeFlow and baselines)", description=prune_run.__doc__
    )
    run_arg(p)
    weights_arg(p)
    p.add_argument("--remove", type=int, required=True, metavar="K", help="number of layers to remove")
    p.add_argument(
        "--method", default="cascadeflow", choices=METHODS, help="how to choose them (default cascadeflow)"
    )
    p.add_argument("--out", type=Path, required=True, help="folder for the pruned model")
    p.add_argument("--seed", type=int, default=0, help="seed of --method random")
    p.add_argument("--calib-windows", type=int, default=32, help="validation windows for data-driven methods")
    p.add_argument("--heal-steps", type=int, default=0, help="fine-tune the pruned model this many steps")
    p.add_argument("--heal-lr", type=float, default=3e-4, help="learning rate of the healing fine-tune")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_prune)

    p = cmds.add_parser(
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
    p.add_argument("--rounds", type=int, default=5, help="rounds, models taking turns (default 5)")
    p.add_argument("--prompt-len", type=int, help="prompt tokens (default half the smallest context)")
    p.add_argument("--new-tokens", type=int, help="decoded tokens (default: up to the smallest context)")
    p.add_argument("--decode-batch", type=int, default=32, help="batch of the decode throughput (default 32)")
    p.add_argument("--train-batch", type=int, default=8, help="windows per training step (default 8)")
    p.add_argument("--seq-len", type=int, help="training window (default the smallest context)")
    p.add_argument(
        "--objective", default="lm", choices=OBJECTIVES, help="training loss: lm (default) or fused prefixes"
    )
    p.add_argument("--uncached", action="store_true", help="also time decoding without the KV cache")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default torch's)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_bench)
