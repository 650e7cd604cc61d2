"""The renderers of the taper, depth-pruning and depth-GFA results, and their claims, on synthetic records."""

from __future__ import annotations

from benchmarks.claims import CLAIMS, VERDICTS
from benchmarks.render.gfa_depth import late_share
from benchmarks.render.gfa_depth import render as render_gfa
from benchmarks.render.prune_depth import METHODS
from benchmarks.render.prune_depth import render as render_prune
from benchmarks.render.reproduction import evaluate
from benchmarks.render.taper import render as render_taper

SEEDS = ["0", "1", "2", "3", "4"]
BASE = {"command": "python x", "machine": "test machine", "time_utc": "now", "seeds": [0, 1, 2, 3, 4]}


def _runs(ppl: float, steps: int = 240) -> dict:
    budget = {"optimizer_steps": steps, "tokens_seen": steps * 4096, "train_seconds": 100.0}
    return {
        s: {"test_ppl": ppl + 0.01 * i, "num_params": 1000, "budget": budget} for i, s in enumerate(SEEDS)
    }


def taper_record() -> dict:
    arms = {
        "lm_uniform_small": 10.0,
        "lm_narrow_d128": 10.5,
        "taper_attn_ffn_d128": 10.0,
        "taper_attn_ffn_d128@time": 9.8,
        "lm_narrow_d128@time": 10.3,
    }
    runs = {a: _runs(p) for a, p in arms.items()}
    latency = {"lm_uniform_small": 4.0, "lm_narrow_d128": 3.4, "taper_attn_ffn_d128": 3.4}
    rounds = {m: {a: [v * (1 + 0.01 * (i % 3)) for i in range(10)] for a, v in latency.items()}
              for m in ("decode_ms_per_token", "prefill_ms")}  # fmt: skip
    rounds.update({m: {a: [1000 / v] * 10 for a, v in latency.items()}
                   for m in ("decode_tokens_per_s", "train_tokens_per_s")})  # fmt: skip
    models = {a: {"rounds": {m: rounds[m][a] for m in rounds}} for a in latency}
    speed = {"0": {"settings": {"rounds": 10}, "load_average": {"before": [1.0]}, "models": models}}
    flops = {"lm_uniform_small": 100, "lm_narrow_d128": 70, "taper_attn_ffn_d128": 70}
    flops |= {
        f"{v}_d128": 75 for v in ("taper_ffn", "taper_resid", "widen_ffn", "widen_attn_ffn", "widen_resid")
    }
    payload = {
        "main_size": 128,
        "sizes": {"128": {"runs": runs, "speed": speed, "throughput": {"ratio": {}, "rounds": 3}}},
        "per_seed": {"test_ppl": {a: {s: r["test_ppl"] for s, r in by.items()} for a, by in runs.items()}},
        "per_round": rounds,
        "flops_per_token": flops,
    }
    config = {
        "data": "t.txt",
        "steps": 240,
        "batch_size": 32,
        "seq_len": 128,
        "lr": 2e-3,
        "warmup_fraction": 0.1,
    }
    return {**BASE, "benchmark": "taper", "config": config | {"eval_interval": 60}, "payload": payload}


def test_the_taper_section_states_the_aims_and_the_claims_read_it() -> None:
    record = taper_record()
    section = render_taper(record)
    assert "**met**" in section.text  # 30% fewer FLOPs, same ppl, 1.18x faster, beats narrow
    assert "taper_attn_ffn_d128 (equal time)" in section.text
    verdicts = {c.name: evaluate(c, {"taper": record}) for c in CLAIMS if c.source == "taper"}
    assert verdicts["lower latency"].verdict == "reproduced"  # 0.85x <= 0.914x
    assert verdicts["a taper beats the uniform model narrowed to its FLOPs"].verdict == "reproduced"
    assert all(any(r.verdict.startswith(v) for v in VERDICTS) for r in verdicts.values())


def prune_record() -> dict:
    results = {}
    for i, s in enumerate(SEEDS):
        rows = {}
        for j, m in enumerate(METHODS):
            for k in (4, 8):
                ppl = 20.0 + j + k + 0.1 * i
                rows[f"{m}|{k}|0"] = {"layers": [1], "attn": [], "mlp": [], "params": 100, "test_ppl": ppl,
                                      "healed_test_ppl": ppl - 1}  # fmt: skip
        final = {m: [float(x) for x in range(16)] for m in METHODS}
        mid = {
            m: [float((7 * x + i) % 16) if m == "magnitude" else float(x) for x in range(16)] for m in METHODS
        }
        results[s] = {
            "rows": rows,
            "full": {"test_ppl": 18.0, "params": 200},
            "rankings": {"final": final, "mid": mid},
            "base": {"val_curve": [[60, 2.0], [120, 1.9], [180, 1.89]], "budget": {"tokens_seen": 10}},
            "paraformer": {"full": {"test_ppl": 17.0}, "4": {"branches": 6, "params": 150, "test_ppl": 19.0}},
        }
    config = {"text": "t", "data": "t.txt", "ks": [4, 8], "steps": 600, "batch_size": 32, "lr": 2e-3,
              "random_seeds": 1, "calib_windows": 16, "heal_steps": 50, "heal_lr": 3e-4}  # fmt: skip
    return {**BASE, "benchmark": "prune-l16-t", "config": config, "payload": {"results": results}}


def test_the_depth_pruning_section_compares_sub_layer_cascadeflow_with_finercut() -> None:
    section = render_prune(prune_record())
    # cascadeflow-sub (index 2) has lower perplexity than finercut (index 4) at every seed: a win, aim met
    assert (
        "cascadeflow-sub - finercut at K=4 unhealed: -2.00" in section.text and "aim **met**" in section.text
    )
    assert "6 branches" in section.text
    mid_vs_final = "Spearman mid vs final checkpoint: cascadeflow - magnitude"
    stability = next(c for c in section.comparisons if c.label == mid_vs_final)
    assert stability.result.verdict == "win"  # magnitude's ranking moved between the checkpoints
    labels = [c.label for c in section.comparisons]
    assert any("ParaFormer-LM first branches - finercut" in x for x in labels)


def test_late_share_and_the_gfa_section() -> None:
    assert late_share([1.0, 1.0, 1.0, 1.0]) == 0.25
    assert late_share([3.0, 1.0, -1.0, 0.0]) == 0.0
    runs = {}
    for arm, late in (("uniform", 0.05), ("equalised", 0.05), ("shared", 0.2)):
        runs[arm] = {
            s: {"test_ppl": 10.0, "late_layer_importance": late + 0.001 * i, "grad_norm": [2.0, 1.0],
                "theory": [2.0, 1.0], "importance": [1.0, 0.1],
                "correlations": {k: {"spearman": 0.9} for k in ("theory~grad", "theory~importance",
                                                                 "grad~importance")}}
            for i, s in enumerate(SEEDS)
        }  # fmt: skip
    record = {**BASE, "benchmark": "gfa-depth", "config": {"data": "t.txt", "steps": 600, "batch_size": 32,
              "lr": 2e-3, "gfa_tokens": 100}, "payload": {"main_depth": 16, "depths": {"16": {"runs": runs}},
              "per_seed": {"late_layer_importance": {a: {s: r["late_layer_importance"] for s, r in by.items()}
                                                     for a, by in runs.items()}}}}  # fmt: skip
    section = render_gfa(record)
    assert "equalising gradients does not restore late layers" in section.text
    assert "shared repetition restores them" in section.text
    claim = next(c for c in CLAIMS if c.source == "gfa-depth")
    assert evaluate(claim, {"gfa-depth": record}).verdict == "reproduced"
