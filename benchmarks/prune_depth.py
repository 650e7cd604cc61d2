"""Pruning deep models, where the methods can differ: 16 layers, two texts, sub-layer CascadeFlow.

For every text and seed the script trains ``lm_uniform_l16`` (16 layers of width 64; a
half-way checkpoint kept in ``mid/``) and ``paraformer_lm_l16`` (the same blocks as 8
branches of depth 2), with the trainer's per-layer and per-sub-layer gradient sums. Then
it removes 25% and 50% of the uniform model's layers (K = 4 and 8) by each method and
measures test perplexity without and with a short healing fine-tune (``--heal-steps`` at
a constant rate, the code of ``paraformer lm prune --heal-steps``):

- CascadeFlow by whole layers: ``cascadeflow`` (accumulated ||g||) and ``cascadeflow-taylor``
  (accumulated |<g, w>|);
- sub-layer CascadeFlow: ``cascadeflow-sub`` (accumulated ||g|| of each attention and FFN
  sub-layer over the square root of its parameter count) and ``cascadeflow-sub-taylor``;
  2K sub-layers, no calibration pass;
- ``finercut`` (greedy sub-layer removal by Jensen-Shannon divergence on calibration text),
  ``block-influence``, ``angular``, ``magnitude``, ``random`` (``--random-seeds`` removals)
  and ``last`` (the last K layers).

The ParaFormer-LM runs are compressed by keeping their first 6 or 4 of 8 branches (the
same parameters as the uniform model without 4 or 8 layers) and healed the same way.
Rank stability: the Spearman correlation of each method's ranking (layers, or sub-layers
for the sub-layer methods; FinerCut's greedy order is run for 2 x max(K) steps, the
sub-layers it never removes tie) between training seeds and between the half-way and
final checkpoints. Per-seed results are cached (``--reuse``); all go to
``benchmarks/results/prune-l16-<text>.json``, rendered by ``python -m benchmarks.report``.

    python benchmarks/prune_depth.py --texts tinyshakespeare python-docs-topics --seeds 0 1 2 3 4 --reuse
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `benchmarks` package

import torch

from benchmarks.protocol import record_results, write_json, write_record
from benchmarks.render.prune_depth import METHODS, render
from benchmarks.runs import finished, kept, log, quiet, run_budget, train_or_reuse
from paraformer.checkpoint import load_model, read_history
from paraformer.commands.lm import calibration_batches, heal_config
from paraformer.commands.runs import run_tokenizer, text_corpus
from paraformer.launch import resume as resume_run
from paraformer.launch import train as train_run
from paraformer.surgery import compress
from paraformer.surgery.scores import choose_removal, finercut_order, finercut_sub_scores
from paraformer.tasks import open_run
from paraformer.tasks.text import LMTrainConfig, evaluate_tokens

ROOT = Path(__file__).resolve().parents[1]
TEXTS = {
    "tinyshakespeare": ROOT.parent / "shared/datasets/text/tinyshakespeare.txt",
    "python-docs-topics": ROOT / "benchmarks/data/python-docs-topics.txt",
}


def base_config(args: argparse.Namespace, text: str, model: str, seed: int) -> LMTrainConfig:
    return LMTrainConfig(
        data=str(TEXTS[text]),
        model=model,
        seed=seed,
        max_steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_fraction=0.1,
        eval_interval=args.eval_interval,
        device="cpu",
    )


def train_with_mid(cfg: LMTrainConfig, folder: Path, reuse: bool) -> dict[str, Any]:
    """Train, keeping the checkpoint at half the evaluations in ``mid/`` (for rank stability)."""
    summary = finished(folder) if reuse else None
    if summary is not None and (folder / "mid").is_dir():
        return summary
    if not (reuse and (folder / "mid" / "model.safetensors").is_file()):
        if folder.exists():
            shutil.rmtree(folder)
        log(f"train {folder.name} (to half-way)")
        half = cfg.max_steps // cfg.eval_interval // 2
        train_run(cfg, folder, log=quiet, progress=False, stop_after_epochs=half)
        mid = folder / "mid"
        mid.mkdir()
        for name in ("model.safetensors", "config.json", "metrics.jsonl", "tokenizer.json"):
            shutil.copy2(folder / name, mid / name)
    log(f"resume {folder.name}")
    summary = resume_run(folder, log=quiet, progress=False)
    log(f"done {folder.name}: val loss {summary['val_loss']:.4f}, test ppl {summary['test_ppl']:.3f}")
    return summary


def ppl(model: torch.nn.Module, tokens: torch.Tensor, seq_len: int) -> float:
    return evaluate_tokens(model, tokens, seq_len, batch_size=64).ppl


def heal(saved: Any, folder: Path, model: torch.nn.Module, args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = heal_config(saved, args.heal_steps, args.heal_lr).replace(grad_stats=False)
        s = train_run(
            cfg,
            Path(tmp) / "heal",
            log=quiet,
            progress=False,
            model=model,
            task_options={"tokenizer": run_tokenizer(folder)},
        )
    return {"healed_test_ppl": s["test_ppl"], "healed_val_ppl": s["val_ppl"]}


def rankings(
    model: torch.nn.Module, record: dict, batches: torch.Tensor, order: list[tuple[int, str]]
) -> dict[str, list[float]]:
    """Each method's ranking: per layer, or per sub-layer for the sub-layer methods (FinerCut: the
    step at which its greedy ``order`` removes each sub-layer)."""
    out = {}
    for method in METHODS:
        if method in ("random", "last"):
            continue
        if method == "finercut":
            out[method] = finercut_sub_scores(order, model.cfg.depth)
            continue
        removal = choose_removal(method, model, 1, grad_record=record, batches=batches, seed=0)
        out[method] = removal.sub_scores or removal.scores
    return out


def prune_seed(args: argparse.Namespace, text: str, seed: int) -> dict[str, Any] | None:
    cache = Path(args.out) / f"prune-{text}-s{seed}.json"
    result: dict[str, Any] = json.loads(cache.read_text()) if args.reuse and cache.is_file() else {}

    def save() -> None:
        write_json(cache, result)

    folder = Path(args.runs) / f"{text}-lm_uniform_l16-s{seed}"
    if args.report_only:
        return result or None
    summary = train_with_mid(base_config(args, text, "lm_uniform_l16", seed), folder, args.reuse)
    history = read_history(folder)
    result["base"] = kept(summary) | {
        "val_curve": [[h["step"], h["val_loss"]] for h in history],
    }
    saved = open_run(folder, task="text")
    result["base"]["budget"] = run_budget(summary, args.batch_size * saved.data.seq_len)
    corpus = text_corpus(saved, folder)
    seq_len = saved.data.seq_len
    batches = calibration_batches(corpus, seq_len, args.calib_windows)
    test = corpus.tokens["test"]
    ranks = result.setdefault("rankings", {})
    for ckpt, where in (("final", folder), ("mid", folder / "mid")):
        if ckpt not in ranks:
            model, record = load_model(where).eval(), read_history(where)[-1]
            order = finercut_order(model, batches, 2 * max(args.ks))  # the slow part: 2K_max greedy steps
            if ckpt == "final":
                result["finercut_order"] = order
            ranks[ckpt] = rankings(model, record, batches, order)
            log(f"{text} seed {seed}: {ckpt} rankings")
            save()
    model, record = load_model(folder).eval(), history[-1]
    result.setdefault("full", {"test_ppl": ppl(model, test, seq_len), "params": model.num_params()})
    rows = result.setdefault("rows", {})
    if "finercut_order" not in result:
        result["finercut_order"] = finercut_order(model, batches, 2 * max(args.ks))
    order = [(int(i), str(part)) for i, part in result["finercut_order"]]
    for k in args.ks:
        for method in METHODS:
            for r in range(args.random_seeds if method == "random" else 1):
                key = f"{method}|{k}|{r}"
                row = rows.get(key)
                want_heal = bool(args.heal_steps) and r == 0
                if row is not None and (not want_heal or "healed_test_ppl" in row):
                    continue
                removal = choose_removal(
                    method,
                    model,
                    k,
                    grad_record=record,
                    batches=batches,
                    seed=1000 * seed + r,
                    finercut=order,
                )
                pruned = removal.apply(model).eval()
                row = row or {
                    "layers": removal.layers,
                    "attn": removal.attn,
                    "mlp": removal.mlp,
                    "params": pruned.num_params(),
                    "test_ppl": ppl(pruned, test, seq_len),
                }
                if want_heal:
                    same = next(
                        (
                            x
                            for x in rows.values()
                            if (x["layers"], x["attn"], x["mlp"]) == (row["layers"], row["attn"], row["mlp"])
                            and "healed_test_ppl" in x
                        ),
                        None,
                    )  # the same pruned model heals the same way (deterministic)
                    row.update(
                        {k2: same[k2] for k2 in ("healed_test_ppl", "healed_val_ppl")}
                        if same
                        else heal(saved, folder, pruned, args)
                    )
                rows[key] = row
                healed = row.get("healed_test_ppl", 0.0)
                log(f"{text} seed {seed}: {key} ppl {row['test_ppl']:.2f} healed {healed:.2f}")
                save()
    if not args.no_paraformer:
        result["paraformer"] = paraformer_seed(args, text, seed, result.get("paraformer", {}), test, seq_len)
        save()
    return result


def paraformer_seed(
    args: argparse.Namespace, text: str, seed: int, out: dict[str, Any], test: torch.Tensor, seq_len: int
) -> dict[str, Any]:
    """ParaFormer-LM with the same blocks, compressed to its first k branches (k = 8 - K/2)."""
    folder = Path(args.runs) / f"{text}-paraformer_lm_l16-s{seed}"
    summary = train_or_reuse(base_config(args, text, "paraformer_lm_l16", seed), folder, reuse=args.reuse)
    out["base"] = kept(summary) | {"budget": run_budget(summary, args.batch_size * 64)}
    saved = open_run(folder, task="text")
    model = load_model(folder).eval()
    out.setdefault("full", {"test_ppl": ppl(model, test, seq_len), "params": model.num_params()})
    for k in args.ks:
        key = str(k)
        if key in out and (not args.heal_steps or "healed_test_ppl" in out[key]):
            continue
        keep = model.num_branches - k // model.cfg.branch_depth
        small = compress(model, keep).eval()
        row = {"branches": keep, "params": small.num_params(), "test_ppl": ppl(small, test, seq_len)}
        if args.heal_steps:
            row.update(heal(saved, folder, small, args))
        out[key] = row
        log(f"{text} seed {seed}: ParaFormer-LM first {keep} branches ppl {row['test_ppl']:.2f}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--texts", nargs="+", default=list(TEXTS), choices=list(TEXTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--eval-interval", type=int, default=80)
    parser.add_argument("--ks", nargs="+", type=int, default=[4, 8])
    parser.add_argument("--random-seeds", type=int, default=3)
    parser.add_argument("--heal-steps", type=int, default=50)
    parser.add_argument("--heal-lr", type=float, default=3e-4)
    parser.add_argument("--calib-windows", type=int, default=16)
    parser.add_argument("--no-paraformer", action="store_true", help="skip the ParaFormer-LM compression arm")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", default=str(ROOT / "runs/bench-depth"))
    parser.add_argument("--out", default=str(ROOT / "runs/bench-prune-depth"))
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument("--report-only", action="store_true", help="train nothing; report the cached seeds")
    parser.add_argument("--no-report", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.reuse = args.reuse or args.report_only
    for text in args.texts:
        results = {}
        for seed in args.seeds:
            r = prune_seed(args, text, seed)
            if r and r.get("rows"):
                results[seed] = r
        if args.no_report or not results:
            continue
        config = vars(args) | {"text": text, "data": str(TEXTS[text])}
        record = record_results(f"prune-l16-{text}", {"results": results}, seeds=list(results), config=config)
        print(render(record).text, flush=True)
        log(f"wrote {write_record(record)}; render BENCHMARKS.md with: python -m benchmarks.report")


if __name__ == "__main__":
    main()
