"""``paraformer info`` and ``paraformer list-models``: what a preset or a run is."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from paraformer.checkpoint import load_config, read_summary
from paraformer.commands.flags import json_arg, print_json
from paraformer.models import build_model, describe_model, get_config, is_branched, list_models, modality_of


def kept_params(model: Any, k: int) -> int:
    """Parameters with the first ``k`` branches only: shared weights plus k branches."""
    shared = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("branches."))
    return shared + sum(p.numel() for b in list(model.branches)[:k] for p in b.parameters())


def model_info(name_or_dir: str | Path) -> dict[str, Any]:
    """Parameters, FLOPs and branch layout of a preset or a saved run.

    Image models report ``flops_per_image``; language models ``flops_per_token`` (at the
    full context) and ``flops_per_sequence`` (``context`` tokens).
    """
    path = Path(name_or_dir)
    if str(name_or_dir) in list_models():
        cfg, source, description = get_config(str(name_or_dir)), "preset", describe_model(str(name_or_dir))
        extra: dict[str, Any] = {}
    elif path.is_dir():
        cfg, _ = load_config(path)
        source, description = "run", ""
        summary = read_summary(path)
        extra = {"summary": summary} if summary else {}
    else:
        get_config(str(name_or_dir))  # raises the unknown-model error with a suggestion
        raise AssertionError("unreachable")
    model = build_model(cfg)
    info: dict[str, Any] = {
        "name": str(name_or_dir),
        "source": source,
        "description": description,
        "family": cfg.family,
        "modality": modality_of(cfg),
        "num_params": sum(p.numel() for p in model.parameters()),
        "num_layers": cfg.num_layers,
        "config": cfg.to_dict(),
        **extra,
    }
    if info["modality"] == "text":
        info["flops_per_sequence"] = model.flops()
        info["flops_per_token"] = info["flops_per_sequence"] // cfg.context
    else:
        info["flops_per_image"] = model.flops()
    if is_branched(model):
        info["layout"] = {
            "num_branches": model.num_branches,
            "branch_depth": cfg.branch_depth,
            "params_per_branch": sum(p.numel() for p in model.branches[0].parameters()),
            "shared_params": info["num_params"] - sum(p.numel() for p in model.branches.parameters()),
            "params_with_k_branches": [kept_params(model, k) for k in range(1, model.num_branches + 1)],
        }
    return info


def _info(args: argparse.Namespace) -> int:
    info = model_info(args.model_or_run)
    if args.json:
        print_json(info)
        return 0
    print(f"{info['name']} ({info['family']}, {info['source']}) {info['description']}".rstrip())
    cfg = info["config"]
    if "image_size" in cfg:
        print(
            f"  input {cfg['in_channels']}x{cfg['image_size']}x{cfg['image_size']}, "
            f"patch {cfg['patch_size']}, "
            f"dim {cfg['dim']}, heads {cfg['heads']}, MLP {cfg['mlp_dim']}, {cfg['num_classes']} classes"
        )
        flops = f"forward FLOPs per image {info['flops_per_image'] / 1e6:,.1f}M"
    else:
        flops = (
            f"forward FLOPs per token {info['flops_per_token'] / 1e6:,.2f}M "
            f"({info['flops_per_sequence'] / 1e6:,.1f}M per sequence of {cfg['context']} tokens)"
        )
    print(f"  parameters {info['num_params']:,}; {flops}")
    layout = info.get("layout")
    if layout:
        print(
            f"  branches {layout['num_branches']} x depth {layout['branch_depth']}: "
            f"{layout['params_per_branch']:,} params per branch, {layout['shared_params']:,} shared"
        )
        print(
            "  params with the first k branches: "
            + ", ".join(
                f"k={k}: {n / 1e6:.2f}M" for k, n in enumerate(layout["params_with_k_branches"], start=1)
            )
        )
    else:
        cfg = info["config"]
        repeat = (
            f", the stack run {cfg['repeat']} times (shared parameters)" if cfg.get("repeat", 1) > 1 else ""
        )
        widths = f"; residual widths {list(cfg['dims'])}" if cfg.get("dims") else ""
        print(f"  {info['num_layers']} blocks in sequence{repeat}{widths}")
    _print_summary(info.get("summary"))
    return 0


def _print_summary(summary: Any) -> None:
    if not isinstance(summary, dict):
        return
    if "epochs_completed" in summary:
        acc = summary.get("test_acc")
        acc_text = f": test accuracy {acc:.2%}" if isinstance(acc, (int, float)) else ""
        ppl = summary.get("test_ppl")
        acc_text += f": test perplexity {ppl:.2f}" if isinstance(ppl, (int, float)) else ""
        print(
            f"  trained {summary['epochs_completed']}/{summary.get('epochs')} epochs on "
            f"{summary.get('dataset')} ({summary.get('mode')}){acc_text}"
        )
    c = summary.get("compression")
    if isinstance(c, dict):
        ratio = c.get("ratio_vs_full")
        ratio_text = (
            f", {ratio:.2f}x fewer parameters than the full model" if isinstance(ratio, float) else ""
        )
        print(
            f"  compressed from {c.get('run')}: branches {c.get('branches')} of {c.get('of_branches')} "
            f"({c.get('select')}){ratio_text}"
        )
    e = summary.get("expansion")
    if isinstance(e, dict):
        classes = f", new classes {e['new_classes']}" if e.get("new_classes") else ""
        print(
            f"  expanded from {e.get('run')}: {e.get('old_branches')} frozen + "
            f"{e.get('added_branches')} new branches{classes}"
        )


def _list_models(args: argparse.Namespace) -> int:
    for name in list_models():
        with torch.device("meta"):  # counts parameters without allocating them
            params = sum(p.numel() for p in build_model(get_config(name)).parameters())
        print(f"{name:26s} {params / 1e6:6.2f}M  {describe_model(name)}")
    return 0


def register(sub: Any, lm: Any) -> None:
    p = sub.add_parser("info", help="describe a preset or a run", description=model_info.__doc__)
    p.add_argument("model_or_run", help="a preset name or a run folder")
    json_arg(p)
    p.set_defaults(func=_info)
    p = sub.add_parser("list-models", help="list the model presets", description="List the model presets.")
    p.set_defaults(func=_list_models)
