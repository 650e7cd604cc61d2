"""``paraformer eval`` (any run), ``paraformer lm eval`` and ``eval --sweep-branches``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from paraformer.analysis.plots import plot_branches
from paraformer.checkpoint import lock, weights_are_finite
from paraformer.commands.flags import (
    device_arg,
    int_in,
    is_other_rank,
    json_arg,
    print_json,
    run_dir_arg,
    weights_arg,
)
from paraformer.commands.runs import (
    describe_weights,
    eval_batch_size,
    image_splits,
    open_model,
    split_tokens,
    text_corpus,
)
from paraformer.errors import ConfigError
from paraformer.files import write_json
from paraformer.models import is_branched, select_branches
from paraformer.parallel.apply import apply_execution
from paraformer.parallel.distributed import init_from_env
from paraformer.parallel.inference import command_paths, inference_latency
from paraformer.surgery import sweep
from paraformer.surgery.select import require_image_paraformer
from paraformer.tasks.image import run_transform
from paraformer.tasks.image_eval import evaluate
from paraformer.tasks.text import evaluate_tokens
from paraformer.train.devices import compile_model

SPLITS = ("test", "val")
BRANCHES_JSON, BRANCHES_PNG = "branches.json", "branches.png"


def kept_params(model: Any, branches: int | None) -> int:
    """Parameters a model needs when only its first ``branches`` branches are kept."""
    if branches is None or not is_branched(model):
        return sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in select_branches(model, branches).parameters())


def evaluate_run(
    run_dir: str | Path,
    *,
    branches: int | None = None,
    split: str = "test",
    weights: str = "best",
    data_dir: str | None = None,
    data: str | None = None,
    device: str = "auto",
    compile: bool = False,
    branch_exec: str = "loop",
    branch_parallel: int = 1,
    task: str | None = None,
    progress: bool = True,
    latency: bool = False,
) -> dict[str, Any]:
    """Figures of a trained run on its own test (or validation) split, for any task.

    Images: accuracy and loss, and the accuracy of every prefix of branches. Text:
    loss, perplexity and bits per character (every prefix for ParaFormer-LM), or with
    ``data`` those of the whole of another UTF-8 file. ``branches=k`` evaluates a
    branched model on its first k branches only (the parameter count is then that of
    the k-branch model). ``data_dir`` points to the run's data where it is now (its
    content hash must match). ``compile`` runs the model through torch.compile (CUDA
    graphs on a GPU); ``branch_exec``/``branch_parallel`` run the branches stacked or
    split over the processes of a torchrun launch, as in training: the figures are the same.
    ``task`` ("image" or "text") refuses a run of the other kind. ``latency`` (images)
    adds the batch-1 latency of the path ``prepare_for_inference`` picks (eager, merged or
    threads) as ``latency_ms``, ``inference_path`` and ``eager_latency_ms``.
    """
    if split not in SPLITS:
        raise ConfigError(f"split must be 'test' or 'val', got {split!r}.")
    run_dir = Path(run_dir)
    saved, model, folder = open_model(run_dir, weights, device, task=task, kind="run", command="eval")
    if not weights_are_finite(model):
        raise ConfigError(
            f"{folder} holds non-finite (NaN or inf) weights: the run diverged; nothing to evaluate."
        )
    if branches is not None:
        if not is_branched(model):
            raise ConfigError(
                f"--branches applies to branched models; {saved.train_cfg.model} is a {model.cfg.family}."
            )
        model.branches.resolve(branches)  # a bad count fails before the data loads
    head = {"run": str(run_dir), "weights": describe_weights(folder, run_dir)}
    if saved.task == "text":
        return {**head, **_evaluate_text(saved, model, folder, split, data, data_dir, branches, progress)}
    if data is not None:
        raise ConfigError("--data scores a text file with a language model; for images use --data-dir.")
    dataset = image_splits(saved, data_dir, (split,), progress=progress)[split]
    transform = run_transform(saved)
    num_params = kept_params(model, branches)
    ctx = init_from_env(branch_parallel, device)
    example = transform(dataset.images[: eval_batch_size(saved)], train=False)
    timing = (
        inference_latency(
            model,
            example[:1].to(next(model.parameters()).device),
            branches=branches,
            paths=command_paths(next(model.parameters()).device),
        )
        if latency and ctx is None
        else None
    )
    model = apply_execution(model, branch_exec, example, ctx=ctx, training=False, log=lambda _: None)
    if compile:
        compile_model(model, inference=True)
    result = evaluate(
        model,
        dataset,
        transform,
        batch_size=eval_batch_size(saved),
        branches=branches,
        prefixes=True,
        progress=progress,
        desc=f"eval {split}",
    )
    return {
        **head,
        "epoch": saved.config_json.get("epoch"),
        "split": split,
        "branches": branches if branches is not None else getattr(model, "num_branches", None),
        "accuracy": result.accuracy,
        "loss": result.loss,
        "num_samples": result.num_samples,
        "num_params": num_params,
        "prefix_accuracy": result.prefix_accuracy or None,
        "latency_ms": timing and timing["latency_ms"],
        "inference_path": timing and timing["inference_path"],
        "eager_latency_ms": timing and timing["timings_ms"].get("eager"),
    }


def _evaluate_text(
    saved: Any,
    model: Any,
    folder: Path,
    split: str,
    data: str | None,
    data_dir: str | None,
    branches: int | None,
    progress: bool,
) -> dict[str, Any]:
    corpus = text_corpus(saved, folder, data=data, data_dir=data_dir)
    tokens, chars = split_tokens(corpus, split, data is not None)
    if branches is not None:
        model = select_branches(model, branches)
    result = evaluate_tokens(
        model,
        tokens,
        saved.data.seq_len,
        num_chars=chars,
        batch_size=eval_batch_size(saved),
        prefixes=True,
        progress=progress,
        desc=f"eval {split if data is None else corpus.name}",
    )
    return {
        "split": split if data is None else corpus.name,
        "branches": branches if branches is not None else getattr(model, "num_branches", None),
        "num_tokens": result.num_tokens,
        "num_params": model.num_params(),
        **result.metrics(),
    }


def sweep_run(
    run_dir: str | Path,
    *,
    weights: str = "best",
    data_dir: str | None = None,
    latency: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """For k = 1..N: validation and test accuracy, parameters, FLOPs and batch-1 latency.

    Writes ``branches.json`` and ``branches.png`` (accuracy against parameters, one
    point per k) into the run folder and returns ``{"rows": [...], ...}``.
    """
    run_dir = Path(run_dir)
    saved, model, _ = open_model(run_dir, weights, task="image", kind="run", command="eval --sweep-branches")
    require_image_paraformer(model, "--sweep-branches")
    splits = ("val", "test") if saved.train_cfg.val_fraction > 0 else ("test",)
    data = image_splits(saved, data_dir, splits, progress=progress)
    transform = run_transform(saved)
    rows = sweep(model, {s: (d, transform) for s, d in data.items()}, latency=latency)
    result = {
        "run": str(run_dir),
        "weights": weights,
        "model": saved.train_cfg.model,
        "dataset": saved.data.dataset,
        "num_branches": model.num_branches,
        "rows": rows,
    }
    with lock(run_dir):
        write_json(run_dir / BRANCHES_JSON, result)
        plot_branches(rows, run_dir / BRANCHES_PNG, f"{saved.train_cfg.model}: first k branches")
    return {**result, "json": str(run_dir / BRANCHES_JSON), "png": str(run_dir / BRANCHES_PNG)}


# ------------------------------------------------------------------------------ verbs


def _eval(args: argparse.Namespace) -> int:
    if getattr(args, "sweep_branches", False):
        return _sweep(args)
    r = evaluate_run(
        args.run_dir,
        branches=args.branches,
        split=args.split,
        weights=args.weights,
        data_dir=args.data_dir,
        data=getattr(args, "data", None),
        device=args.device,
        compile=getattr(args, "compile", False),
        branch_exec=getattr(args, "branch_exec", "loop"),
        branch_parallel=getattr(args, "branch_parallel", 1),
        task="text" if getattr(args, "lm_task", False) else None,
        progress=not args.json and not is_other_rank(),
        latency=getattr(args, "latency", False),
    )
    if is_other_rank():
        return 0
    if args.json:
        print_json(r)
        return 0
    branches = f" with {r['branches']} branch(es)" if r["branches"] and args.branches else ""
    if "ppl" in r:
        print(
            f"{r['run']} ({r['weights']} weights){branches}: {r['split']} loss {r['loss']:.4f}, perplexity "
            f"{r['ppl']:.2f}, {r['bpc']:.3f} bits/char on {r['num_tokens']:,} tokens; "
            f"{r['num_params']:,} params"
        )
        if r.get("ppl_prefix"):
            print(
                "perplexity with the first k branches: "
                + "  ".join(f"k={k}: {p:.2f}" for k, p in enumerate(r["ppl_prefix"], start=1))
            )
        return 0
    epoch = f", epoch {r['epoch']}" if r.get("epoch") else ""
    print(
        f"{r['run']} ({r['weights']} weights{epoch}){branches}: {r['split']} accuracy "
        f"{r['accuracy']:.2%} on {r['num_samples']:,} images, loss {r['loss']:.4f}, "
        f"{r['num_params']:,} params"
    )
    if r["prefix_accuracy"] and args.branches is None:
        print(
            "accuracy with the first k branches: "
            + "  ".join(f"k={k}: {100 * a:.1f}%" for k, a in enumerate(r["prefix_accuracy"], start=1))
        )
    if r.get("latency_ms") is not None:
        eager = r["eager_latency_ms"]
        versus = f"; eager {eager:.2f} ms" if eager is not None and r["inference_path"] != "eager" else ""
        print(f"batch-1 latency: {r['latency_ms']:.2f} ms on the {r['inference_path']} path (median{versus})")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    """``paraformer eval RUN --sweep-branches``: the table, ``branches.json`` and ``branches.png``."""
    if args.branches is not None or args.split != "test":
        raise ConfigError("--sweep-branches measures every k on both splits; drop --branches and --split.")
    result = sweep_run(args.run_dir, weights=args.weights, data_dir=args.data_dir, progress=not args.json)
    if args.json:
        print_json(result)
        return 0
    print(f"{result['run']}: the first k of {result['num_branches']} branches ({result['dataset']})")
    print(
        f"{'k':>3} {'params':>11} {'MFLOPs/img':>11} {'latency ms':>11} {'path':>8} {'eager ms':>9} "
        f"{'val acc %':>10} {'test acc %':>11}"
    )
    for r in result["rows"]:
        val = f"{100 * r['val_acc']:10.2f}" if "val_acc" in r else f"{'n/a':>10}"
        eager = r["eager_latency_ms"] if r["eager_latency_ms"] is not None else float("nan")
        print(
            f"{r['branches']:>3} {r['params']:>11,} {r['flops_per_image'] / 1e6:>11.2f} "
            f"{r['latency_ms']:>11.2f} {r['inference_path']:>8} {eager:>9.2f} "
            f"{val} {100 * r['test_acc']:>11.2f}"
        )
    print(
        "latency: batch 1, median of 20 calls, on the path prepare_for_inference picks (eager, merged or "
        "threads; torch.compile is left out here)"
    )
    print(f"wrote {result['json']} and {result['png']}")
    return 0


def register(sub: Any, lm: Any) -> None:
    p = sub.add_parser(
        "eval", help="evaluate a trained run (images or text)", description=evaluate_run.__doc__
    )
    run_dir_arg(p, "a run folder written by `paraformer train` or `paraformer lm train`")
    p.add_argument("--branches", type=int_in(1, 4096), metavar="K", help="use only the first K branches")
    p.add_argument(
        "--sweep-branches",
        action="store_true",
        help="for k = 1..N: validation and test accuracy, parameters, FLOPs and batch-1 latency of the "
        "first k branches; writes branches.json and branches.png into the run folder",
    )
    p.add_argument("--split", default="test", choices=SPLITS)
    weights_arg(p)
    p.add_argument(
        "--data-dir", help="where the run's data is now, if it moved (its content hash is checked)"
    )
    p.add_argument("--data", help="text runs: score the whole of another UTF-8 file instead")
    device_arg(p)
    p.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA graphs on a GPU)")
    p.add_argument(
        "--latency",
        action="store_true",
        help="also measure batch-1 latency on the fastest inference path (eager, merged or threads)",
    )
    p.add_argument(
        "--branch-exec",
        default="loop",
        choices=("loop", "stacked", "auto"),
        help="as for train (default loop)",
    )
    p.add_argument(
        "--branch-parallel",
        type=int_in(1, 4096),
        default=1,
        metavar="P",
        help="split the branches over P torchrun processes",
    )
    json_arg(p)
    p.set_defaults(func=_eval)

    p = lm.add_parser(
        "eval", help="loss, perplexity and bits/char of a run", description=evaluate_run.__doc__
    )
    run_dir_arg(p, "a run folder written by `paraformer lm train`")
    device_arg(p)
    weights_arg(p)
    p.add_argument("--split", default="test", choices=SPLITS)
    p.add_argument(
        "--branches", type=int_in(1, 4096), metavar="K", help="ParaFormer-LM: the first K branches"
    )
    p.add_argument("--data", help="evaluate on the whole of another UTF-8 file instead")
    p.add_argument("--data-dir", help="the folder where the run's text is now, if it moved (hash checked)")
    json_arg(p)
    p.set_defaults(func=_eval, lm_task=True)
