"""The papers' claims and our additions: for each, the raw results and the comparisons that test it.

REPRODUCTION.md is rendered from ``CLAIMS`` (``benchmarks/render/reproduction.py``). A claim names
its results file (``benchmarks/results/<source>.json``), a function that picks its comparisons
from that file (the same ones BENCHMARKS.md shows, made by ``protocol.paired``), and the rule
that maps their 95% intervals to fixed verdict words (``VERDICTS``).

Benchmarks not written yet are read in one layout, so their claims work once the file exists:
``payload["per_seed"][metric][arm] = {seed: value}`` and, for speeds measured in rounds,
``payload["per_round"][metric][arm] = [value per round]``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from benchmarks.protocol import LOSS, WIN, by_round, paired, paired_ratio
from benchmarks.render import (
    accuracy,
    compression,
    continual,
    latency,
    lm,
    prune,
    prune_depth,
    speed,
    taper,
)
from benchmarks.render.common import Compared

REPRODUCED = "reproduced"
SMALLER = "reproduced in direction, smaller"
NOT_AT_SCALE = "not reproduced at this scale"
CONTRADICTED = "contradicted"
UNTESTABLE = "not testable here"
NOT_MEASURED = "not yet measured"
VERDICTS = (REPRODUCED, SMALLER, NOT_AT_SCALE, CONTRADICTED, UNTESTABLE, NOT_MEASURED)


@dataclass(frozen=True)
class Evidence:
    """The comparisons behind a claim (a minus b, oriented so that "win" is the claimed side)."""

    compared: list[Compared]
    facts: dict[str, float] = field(default_factory=dict)


def _short(c: Compared | None, label: str) -> list[Compared]:
    return [] if c is None else [dataclasses.replace(c, label=label)]


# ------------------------------------------------------------------------------ rules


@dataclass(frozen=True)
class Beats:
    """Every comparison a win: reproduced; any a loss: contradicted; else not reproduced at this scale."""

    name = "all wins"

    text: str = (
        "every comparison a win (its 95% interval on the claimed side of 0): reproduced; any a loss: "
        "contradicted; otherwise: not reproduced at this scale"
    )

    def verdict(self, ev: Evidence) -> str:
        verdicts = [c.result.verdict for c in ev.compared]
        if verdicts and all(v == WIN for v in verdicts):
            return REPRODUCED
        return CONTRADICTED if LOSS in verdicts else NOT_AT_SCALE


@dataclass(frozen=True)
class Reaches:
    """A ratio claim: a win whose interval reaches the paper's figure; a win short of it is 'smaller'."""

    target: float  # the paper's ratio (a / b)
    better: str = "higher"

    @property
    def name(self) -> str:
        return f"reaches {self.target:.4g}x"

    @property
    def text(self) -> str:
        side = "at least" if self.better == "higher" else "at most"
        return (
            f"win and the interval reaches {side} {self.target:.4g}x: reproduced; a win short of it: smaller"
        )

    def verdict(self, ev: Evidence) -> str:
        c = ev.compared[0].result
        if c.verdict != WIN:
            return CONTRADICTED if c.verdict == LOSS else NOT_AT_SCALE
        reach = c.high >= math.log(self.target) if self.better == "higher" else c.low <= math.log(self.target)
        return REPRODUCED if reach else SMALLER


@dataclass(frozen=True)
class Comparable:
    """'Comparable' = not worse by more than ``margin`` of the reference (lower is better)."""

    margin: float = 0.02

    @property
    def name(self) -> str:
        return f"within +{self.margin:.0%}"

    @property
    def text(self) -> str:
        return (
            f"interval below +{self.margin:.0%} of the reference: reproduced; above it: contradicted; "
            "straddling it: not reproduced at this scale"
        )

    def verdict(self, ev: Evidence) -> str:
        c, limit = ev.compared[0].result, self.margin * ev.facts["reference"]
        if c.n < 2:
            return NOT_AT_SCALE
        return REPRODUCED if c.high <= limit else CONTRADICTED if c.low > limit else NOT_AT_SCALE


@dataclass(frozen=True)
class NotWorse:
    """'Matches' = not significantly worse: a loss contradicts it; a tie or a win reproduces it."""

    name = "not worse"
    text: str = "no loss (the 95% interval reaches 0 or the better side): reproduced; a loss: contradicted"

    def verdict(self, ev: Evidence) -> str:
        c = ev.compared[0].result
        if c.n < 2:
            return NOT_AT_SCALE
        return CONTRADICTED if c.verdict == LOSS else REPRODUCED


@dataclass(frozen=True)
class WithinReach:
    """A compression ratio: untestable when the model cannot be cut that far, else the smallest model
    must not lose to the full one."""

    target: float

    @property
    def name(self) -> str:
        return f"needs {self.target:g}x"

    @property
    def text(self) -> str:
        return f"needs a measured ratio of {self.target:g}x; then the cut model must not lose to the full one"

    def verdict(self, ev: Evidence) -> str:
        if ev.facts["max_ratio"] < self.target:
            return (
                f"{UNTESTABLE}: {ev.facts['branches']:.0f} branches of this model allow at most "
                f"{ev.facts['max_ratio']:.2f}x (one branch)"
            )
        return CONTRADICTED if ev.compared[0].result.verdict == LOSS else REPRODUCED


@dataclass(frozen=True)
class Interventions:
    """Equalising gradient norms does not restore late layers (no win); shared repetition does (a win)."""

    name = "interventions"
    text: str = "equalised: no win and shared repetition: a win -> reproduced; the reverse -> contradicted"

    def verdict(self, ev: Evidence) -> str:
        equalised, shared = (c.result.verdict for c in ev.compared)
        if equalised != WIN and shared == WIN:
            return REPRODUCED
        return CONTRADICTED if equalised == WIN or shared == LOSS else NOT_AT_SCALE


# ------------------------------------------------------------------------------ evidence


def _pick(comparisons: Callable[[dict], dict[str, Compared]], key: str, label: str) -> Callable:
    return lambda record: Evidence(_short(comparisons(record).get(key), label))


def _compression(record: dict[str, Any]) -> Evidence:
    n = compression.branches(record)
    c = compression.comparisons(record)
    max_ratio = compression.params(record, n) / compression.params(record, 1)
    return Evidence(
        _short(c.get("prefix-full-k1"), f"1 of {n} branches ({max_ratio:.2f}x) - full model"),
        {"max_ratio": max_ratio, "branches": n},
    )


def _greedy(record: dict[str, Any]) -> Evidence:
    quarter = max(1, compression.branches(record) // 4)
    c = compression.comparisons(record).get(f"greedy-prefix-k{quarter}")
    return Evidence(_short(c, f"greedy - prefix, k = {quarter}"))


def _continual(record: dict[str, Any]) -> Evidence:
    c = continual.comparisons(record)
    return Evidence(
        _short(c.get("expand-finetune-avg_acc_class_il"), "class-IL accuracy, expansion - fine-tuning")
        + _short(c.get("expand-finetune-forgetting_class_il"), "class-IL forgetting, expansion - fine-tuning")
    )


def _parallel(ref: str) -> Callable[[dict], Evidence]:
    def evidence(record: dict[str, Any]) -> Evidence:
        runs = record["payload"]["runs"]
        if not runs.get(ref) or not runs.get("para-bp2"):
            return Evidence([])
        c = speed.speedup(runs[ref], runs["para-bp2"])
        return Evidence(
            [Compared(f"branch-parallel speed / {speed.DIST_LABELS[ref]}", c, paired_by="rounds")]
        )

    return evidence


def _cascade_ppl(record: dict[str, Any]) -> Evidence:
    c = lm.comparisons(record).get("ppl-cascadeformer_small")
    uniform = list(lm.test_ppl(record, lm.BASE).values())
    return Evidence(
        _short(c, "test perplexity, CascadeFormer - uniform"), {"reference": sum(uniform) / len(uniform)}
    )


def _taper_ppl(record: dict[str, Any]) -> Evidence:
    arm = MAIN_TAPER
    c = taper.comparisons(record).get(f"ppl-{arm}")
    uniform = list(taper.ppl(record, "lm_uniform_small").values())
    return Evidence(
        _short(c, f"test perplexity, {arm} ({taper.flops_cut(record, arm):.0%} fewer FLOPs) - uniform"),
        {"reference": sum(uniform) / max(len(uniform), 1)},
    )


def _per_round(metric: str, a: str, b: str, better: str, label: str) -> Callable[[dict], Evidence]:
    def evidence(record: dict[str, Any]) -> Evidence:
        arms = record["payload"]["per_round"][metric]
        return Evidence(
            [Compared(label, paired_ratio(by_round(arms[a]), by_round(arms[b]), better), paired_by="rounds")]
        )

    return evidence


def _latency(model: str, batch: int) -> Callable[[dict], Evidence]:
    def evidence(record: dict[str, Any]) -> Evidence:
        c = latency.comparisons(record).get(f"{model}-b{batch}")
        return Evidence(_short(c, f"{model}, batch {batch}: speed, best path / ViT twin's best path"))

    return evidence


def _interventions(record: dict[str, Any]) -> Evidence:
    arms = record["payload"]["per_seed"]["late_layer_importance"]
    return Evidence(
        [
            Compared(
                "late-layer importance, equalised - uniform", paired(arms["equalised"], arms["uniform"]), ""
            ),
            Compared(
                "late-layer importance, shared repetition - uniform",
                paired(arms["shared"], arms["uniform"]),
                "",
            ),
        ]
    )


def _all(comparisons: Callable[[dict], dict[str, Compared]], keys: dict[str, str]) -> Callable:
    return lambda record: Evidence(
        [x for k, label in keys.items() for x in _short(comparisons(record).get(k), label)]
    )


HEURISTICS = ("magnitude", "block-influence", "angular", "finercut", "random")
MAIN_TAPER = "taper_attn_ffn_d128"  # our reading of CascadeFormer: heads and FFN taper, fewer FLOPs
TEXTS = ("tinyshakespeare", "python-docs-topics")


# ------------------------------------------------------------------------------ the claims


@dataclass(frozen=True)
class Claim:
    group: str
    name: str
    paper: str  # the paper's statement (ours, for additions)
    protocol: str  # our test in one line
    section: str  # its BENCHMARKS.md section (anchor)
    source: str  # benchmarks/results/<source>.json
    command: str  # regenerates the row's raw file
    evidence: Callable[[dict[str, Any]], Evidence]
    rule: Any
    untestable: str = ""  # set: not testable here, whatever the files say
    stale: Callable[[dict[str, Any]], str] = lambda record: ""  # why a file cannot feed the claim yet


def _before_protocol(record: dict[str, Any]) -> str:
    if record.get("migrated") or "arms" not in record.get("payload", {}):
        return "the recorded run predates the current continual protocol (the library's methods, issue 23)"
    return ""


PARAFORMER = "ParaFormer (arXiv 2510.15425)"
CASCADE = "CascadeFormer (arXiv 2606.26538)"
OURS = "Beyond the papers"
DATASETS = ("fashion-mnist", "cifar10")
DATA = "--data-dir ../shared/datasets"
RECIPE = "--epochs 3 --limit-train 2000 --batch-size 32 --reuse"
ACC = f"python benchmarks/accuracy.py --datasets {{}} {DATA} {RECIPE}"
COMP = f"python benchmarks/compression.py --datasets {{}} {DATA} {RECIPE}"
CONT = f"python benchmarks/continual.py --datasets {{}} {DATA} --reuse"
DIST = "python benchmarks/parallel.py --parts distributed"
PRUNE = "python benchmarks/prune.py --reuse"
LM = "python benchmarks/lm.py --data ../shared/datasets/text/tinyshakespeare.txt --reuse"
LATENCY = "python benchmarks/latency.py --threads 2"
TAPER = "python benchmarks/taper.py --seeds 0 1 2 3 4 --reuse --threads 1"
DEPTH = "python benchmarks/prune_depth.py --seeds 0 1 2 3 4 --reuse --threads 1"
GFA_DEPTH = "python benchmarks/gfa_depth.py --reuse --threads 1"
GPU = "a GPU launch of benchmarks/parallel.py (not written yet)"
VIT_CLAIM = "outperforms a standard ViT on CIFAR-10, CIFAR-100 and Fashion-MNIST, by up to 2.39 points"
SPEED_CLAIM = "multi-GPU deployment 3.30x (± 0.86) faster than FairScale's pipeline parallelism"
PAIRED = "paired by seed"
LATE = "late-layer importance"

# fmt: off
CLAIMS: list[Claim] = [
    *(Claim(PARAFORMER, f"beats its ViT twin ({ds})", VIT_CLAIM,
            f"progressive schedule vs the parameter-matched ViT twin, equal epochs, test accuracy, {PAIRED}",
            f"accuracy-{ds}", f"accuracy-{ds}", ACC.format(ds),
            _pick(accuracy.comparisons, "progressive-vit", "progressive - ViT twin"), Beats())
      for ds in DATASETS),
    Claim(PARAFORMER, "beats its ViT twin (cifar100)", VIT_CLAIM, "as above", "accuracy-cifar10",
          "accuracy-cifar100", "-", lambda r: Evidence([]), Beats(),
          untestable="CIFAR-100 is not on this machine (its loader is tested on small files)"),
    *(Claim(PARAFORMER, f"faster convergence ({ds})", "faster convergence than the ViT",
            f"validation accuracy after the first epoch, progressive vs ViT twin, {PAIRED}",
            f"accuracy-{ds}", f"accuracy-{ds}", ACC.format(ds),
            _pick(accuracy.comparisons, "progressive-vit-epoch1", "progressive - ViT twin"), Beats())
      for ds in DATASETS),
    *(Claim(PARAFORMER, f"compression ({ds})", "up to 15.07x model compression by using only some branches",
            f"the k-branch model cut from a trained ParaFormer vs the full model, test accuracy, {PAIRED}",
            f"compression-{ds}", f"compression-{ds}", COMP.format(ds), _compression, WithinReach(15.07))
      for ds in DATASETS),
    *(Claim(PARAFORMER, f"expansion for continual learning ({ds})",
            "model expansion (adding branches) enables adaptive continual learning",
            f"Split dataset, expansion vs fine-tuning: class-IL accuracy and forgetting, {PAIRED}",
            f"continual-{ds}", f"continual-{ds}", CONT.format(ds), _continual, Beats(),
            stale=_before_protocol)
      for ds in DATASETS),
    Claim(PARAFORMER, "multi-GPU speed vs pipeline parallelism (GPU)", SPEED_CLAIM,
          "branch-parallel training vs the ViT twin under GPipe on the same GPUs, speed paired by round",
          "parallel-distributed", "parallel-gpu", GPU, _parallel("vit-gpipe2"), Reaches(3.30)),
    *(Claim(PARAFORMER, f"multi-process speed vs {name} (2 CPU ranks)", SPEED_CLAIM,
            f"branch-parallel training on 2 torchrun CPU ranks vs the ViT twin under {name}, paired by round",
            "parallel-distributed", "parallel-distributed", DIST,
            _parallel(ref), Reaches(3.30))
      for ref, name in (("vit-gpipe2", "GPipe"), ("vit-fairscale2", "FairScale Pipe"))),
    Claim(CASCADE, "comparable perplexity at the same training budget",
          "CascadeFormer reaches comparable perplexity to a uniform model at the same training budget",
          f"tapered vs uniform LM, equal parameters, steps and tokens, test perplexity, {PAIRED}",
          "lm-compare", "lm", LM, _cascade_ppl, Comparable(0.02)),
    Claim(CASCADE, "comparable perplexity with fewer FLOPs",
          "CascadeFormer reaches comparable perplexity to a uniform model at the same training budget",
          f"heads-and-FFN taper with 30% fewer FLOPs vs uniform, equal tokens, test perplexity, {PAIRED}",
          "taper", "taper", TAPER, _taper_ppl, Comparable(0.02)),
    Claim(CASCADE, "lower latency", "8.6% lower latency than the uniform model",
          "cached decoding at batch 1 (ms/token) of the trained models, heads-and-FFN taper / uniform, "
          "paired by round", "taper", "taper", TAPER,
          _per_round("decode_ms_per_token", MAIN_TAPER, "lm_uniform_small", "lower",
                     "batch-1 decode latency, taper / uniform"), Reaches(1 - 0.086, "lower")),
    Claim(CASCADE, "higher throughput", "9.4% higher throughput than the uniform model",
          "cached decoding at batch 32 (tokens/s), heads-and-FFN taper / uniform, paired by round", "taper",
          "taper", TAPER,
          _per_round("decode_tokens_per_s", MAIN_TAPER, "lm_uniform_small", "higher",
                     "batch-32 decode throughput, taper / uniform"), Reaches(1.094)),
    Claim(CASCADE, "CascadeFlow beats the pruning heuristics on perplexity",
          "pruning by accumulated training gradient beats standard heuristics on perplexity",
          f"remove 2 of 8 layers, test perplexity unhealed, CascadeFlow vs each heuristic, {PAIRED}",
          "lm-prune", "prune-lm_uniform_small", PRUNE,
          _all(prune.comparisons, {f"ppl-unhealed-k2-{m}": f"perplexity, CascadeFlow - {m}"
                                   for m in HEURISTICS}),
          Beats()),
    *(Claim(CASCADE, f"CascadeFlow beats the pruning heuristics on perplexity (16 layers, {t})",
            "pruning by accumulated training gradient beats standard heuristics on perplexity",
            f"remove 4 of 16 layers, test perplexity unhealed, CascadeFlow vs each layer heuristic, {PAIRED}",
            f"prune-l16-{t}", f"prune-l16-{t}", DEPTH,
            _all(prune_depth.comparisons, {f"flow-{m}-k4": f"perplexity, CascadeFlow - {m}"
                                           for m in prune_depth.LAYER_METHODS}),
            Beats())
      for t in TEXTS),
    *(Claim(CASCADE, f"CascadeFlow's ranking is more stable (16 layers, {t})",
            "CascadeFlow's layer ranking is more stable than the heuristics'",
            f"Spearman of the ranking, half-way vs final checkpoint, CascadeFlow vs each, {PAIRED}",
            f"prune-l16-{t}", f"prune-l16-{t}", DEPTH,
            _all(prune_depth.comparisons, {f"stability-{m}": f"stability, CascadeFlow - {m}"
                                           for m in prune_depth.RANKED[1:]}),
            Beats())
      for t in TEXTS),
    Claim(CASCADE, "CascadeFlow's ranking is more stable",
          "CascadeFlow's layer ranking is more stable than the heuristics'",
          f"Spearman of the layer ranking, half-way vs final checkpoint, CascadeFlow vs each, {PAIRED}",
          "lm-prune", "prune-lm_uniform_small", PRUNE,
          _all(prune.comparisons, {f"stability-{m}": f"stability, CascadeFlow - {m}" for m in HEURISTICS}),
          Beats()),
    Claim(CASCADE, "GFA predicts the per-layer gradient",
          "gradient fan-in decays linearly with depth in a pre-LN residual stack",
          "Spearman(fan-in 1 + (L - l), measured gradient norm) per seed, against 0, each sequential model",
          "lm-gfa", "lm", LM,
          _all(lm.gfa_comparisons, {f"gfa-{a}": f"Spearman, {lm.label(a)}"
                                    for a in ("lm_uniform_small", "cascadeformer_small",
                                              "lm_widening_small")}),
          Beats()),
    Claim(CASCADE, "equalising gradients does not restore late layers; shared repetition does",
          "equalising per-layer gradient norms does not restore late layers; parameter-shared "
          "repetition does",
          f"{LATE} (share of skip importance in the last 25% of 16 blocks) with gradient equalisation or "
          f"parameter-shared repetition vs uniform, {PAIRED}",
          "gfa-depth", "gfa-depth", GFA_DEPTH, _interventions, Interventions()),
    *(Claim(OURS, f"fused training beats progressive at equal time ({ds})",
            "the fused prefix objective trains better than the authors' per-prefix schedule per second",
            f"fused mode given progressive's training time vs progressive, test accuracy, {PAIRED}",
            f"accuracy-{ds}", f"accuracy-{ds}", ACC.format(ds),
            _pick(accuracy.comparisons, "fused-time-progressive", "fused - progressive"), Beats())
      for ds in DATASETS),
    *(Claim(OURS, f"exemplar-free expansion beats LwF ({ds})",
            "expansion with distillation, an auxiliary head and weight aligning beats Learning without "
            "Forgetting in class-incremental learning, both without stored images",
            f"Split dataset, class-IL average accuracy, expansion vs LwF, {PAIRED}",
            f"continual-{ds}", f"continual-{ds}", CONT.format(ds),
            _pick(continual.comparisons, "expand-lwf-avg_acc_class_il", "class-IL accuracy, expansion - LwF"),
            Beats(), stale=_before_protocol)
      for ds in DATASETS),
    *(Claim(OURS, f"expansion with 200 images beats experience replay ({ds})",
            "expansion with a 200-image memory beats experience replay with the same 200 images",
            f"Split dataset, class-IL average accuracy, expansion + 200 vs ER-200, {PAIRED}",
            f"continual-{ds}", f"continual-{ds}", CONT.format(ds),
            _pick(continual.comparisons, "expand-200-er-avg_acc_class_il",
                  "class-IL accuracy, expansion + 200 - ER-200"),
            Beats(), stale=_before_protocol)
      for ds in DATASETS),
    *(Claim(OURS, f"greedy branch selection beats the prefix ({ds})",
            "choosing k branches greedily by validation loss beats keeping the first k",
            f"k = N/4 branches, greedy vs prefix, test accuracy, {PAIRED}",
            f"compression-{ds}", f"compression-{ds}", COMP.format(ds), _greedy, Beats())
      for ds in DATASETS),
    Claim(OURS, "a taper beats the uniform model narrowed to its FLOPs",
          "tapering width with depth beats simply shrinking every layer, at equal FLOPs and tokens",
          f"heads-and-FFN taper vs the FLOP-matched narrow uniform model, test perplexity, {PAIRED}",
          "taper", "taper", TAPER,
          _pick(taper.comparisons, f"narrow-{MAIN_TAPER}", "test perplexity, taper - narrow uniform"),
          Beats()),
    *(Claim(OURS, f"sub-layer CascadeFlow matches FinerCut without calibration (16 layers, {t})",
            "scoring attention and FFN sub-layers by accumulated training gradients matches FinerCut's "
            "perplexity at 25% removal, with no calibration pass",
            f"remove 4 of 16 layers' worth (8 sub-layers), test perplexity unhealed, {PAIRED}",
            f"prune-l16-{t}", f"prune-l16-{t}", DEPTH,
            _pick(prune_depth.comparisons, "sub-finercut-k4", "perplexity, cascadeflow-sub - finercut"),
            NotWorse())
      for t in TEXTS),
    Claim(OURS, "ParaFormer-LM beats the uniform LM",
          "parallel branches trained with the fused objective make a better causal LM at equal parameters",
          f"ParaFormer-LM vs uniform LM, equal parameters and budget, test perplexity, {PAIRED}",
          "lm-compare", "lm", LM,
          _pick(lm.comparisons, "ppl-paraformer_lm_small", "test perplexity, ParaFormer-LM - uniform"),
          Beats()),
    *(Claim(OURS, f"batch-1 inference 1.37x faster than the ViT twin ({m})",
            "merged branches (one wide first-layer matmul, later ops batched) make batch-1 inference at "
            "least 1.37x faster than the ViT twin prepared the same way",
            "batch-1 latency, each model's fastest path of prepare_for_inference vs the twin's, paired by "
            "round", "latency", "latency", LATENCY, _latency(m, 1), Reaches(1.37))
      for m in latency.AIM_MODELS),
    *(Claim(OURS, f"never slower than the ViT twin at batch 64 ({m})",
            "the prepared ParaFormer is never slower than the ViT twin at batch 64",
            "batch-64 latency, fastest paths, paired by round", "latency", "latency", LATENCY,
            _latency(m, 64), NotWorse())
      for m in latency.AIM_MODELS),
    Claim(OURS, "stacked branches at batch 1 on a GPU beat the ViT twin",
          "stacked branch weights (batched matmuls) make batch-1 inference faster than the ViT twin on a GPU",
          "batch-1 latency on a GPU, stacked branches / ViT twin, paired by round", "parallel-single",
          "parallel-gpu", GPU,
          _per_round("batch1_ms", "stacked", "vit", "lower", "batch-1 latency, stacked / ViT"),
          Beats()),
]
# fmt: on
