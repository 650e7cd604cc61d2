"""The one renderer: BENCHMARKS.md and REPRODUCTION.md (and the plots) from benchmarks/results/*.json.

    python -m benchmarks.report            # render both files and every plot
    python -m benchmarks.report --check    # exit 1 when a committed file differs from the rendering

Every table comes from a raw results file written by ``protocol.save_results``; a section whose
file does not exist yet says so and names the command that writes it. ``--check`` compares text
only (plots vary with the matplotlib version).
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.protocol import LOSS, RESULTS, ROOT, TIE, WIN, load_results
from benchmarks.render import REGISTRY
from benchmarks.render.common import Section, table
from benchmarks.render.reproduction import render as render_reproduction
from benchmarks.render.reproduction import takeaway


@dataclass(frozen=True)
class Slot:
    """One section of BENCHMARKS.md: its marker, the kind of renderer, its raw file, how to (re)make it."""

    tag: str
    kind: str
    source: str
    title: str
    command: str


ACC = "python benchmarks/accuracy.py --datasets {} --data-dir ../shared/datasets --threads 1 --reuse"
CHAPTERS: list[tuple[str, str, list[Slot]]] = [
    (
        "Accuracy: ParaFormer training modes vs the parameter-matched ViT twin",
        "`benchmarks/accuracy.py` trains, on the same data, seeds, batch and optimiser, the sequential ViT "
        "twin and a ParaFormer in each mode (`joint`, `fused`, `progressive`) for the same epochs, then "
        "the ViT twin and fused mode again at progressive's budget: its optimizer steps (`-steps` arms) or "
        "its training time (`-time` arms, sized from each schedule's epoch cost measured side by side).",
        [
            Slot(f"accuracy-{ds}", "accuracy", f"accuracy-{ds}", f"Accuracy ({ds})", ACC.format(ds))
            for ds in ("fashion-mnist", "cifar10")
        ],
    ),
    (
        "Defaults that fit the data",
        "`benchmarks/defaults.py` trains with the budget `paraformer train` now chooses from the size of "
        "the training set, and with the former defaults, on small and medium subsets.",
        [
            Slot(
                "defaults",
                "defaults",
                "defaults",
                "Defaults that fit the data",
                "python benchmarks/defaults.py --data-dir ../shared/datasets --threads 1 --reuse",
            )
        ],
    ),
    (
        "Training cost per epoch, bf16 and torch.compile",
        "`benchmarks/throughput.py` times one real AdamW training step per mode on the same random batch, "
        "the modes taking turns round by round, and charges each mode every pass its epoch makes.",
        [
            Slot(
                "throughput",
                "throughput",
                "throughput",
                "Training cost per epoch",
                "python benchmarks/throughput.py --threads 1",
            ),
            Slot(
                "throughput-bf16",
                "throughput",
                "throughput-bf16",
                "bf16 autocast against fp32",
                "python benchmarks/throughput.py --bf16 --rounds 3 --threads 1",
            ),
            Slot(
                "throughput-compile",
                "throughput",
                "throughput-compile",
                "torch.compile against eager",
                "python benchmarks/throughput.py --compile --rounds 3 --threads 1",
            ),
        ],  # fmt: skip
    ),
    (
        "Fused and parallel branches",
        "`benchmarks/parallel.py` compares the branch loop, stacked (fused) branches and the ViT twin in one "
        "process, then branch parallelism over torchrun ranks against DDP and pipeline parallelism of the "
        "ViT twin.",
        [
            Slot(
                "parallel-single",
                "parallel-single",
                "parallel-single",
                "Fused and parallel branches, one process",
                "python benchmarks/parallel.py --parts single",
            ),
            Slot(
                "parallel-distributed",
                "parallel-distributed",
                "parallel-distributed",
                "Fused and parallel branches, torchrun ranks",
                "python benchmarks/parallel.py --parts distributed",
            ),
            Slot(
                "latency",
                "latency",
                "latency",
                "Inference latency against the ViT twin",
                "python benchmarks/latency.py --threads 2",
            ),
        ],  # fmt: skip
    ),
    (
        "Compression: k of N branches",
        "`benchmarks/compression.py` trains one ParaFormer, cuts it to k branches (the first k, greedy by "
        "validation loss, greedy then fine-tuned) and trains ViTs of the same size from scratch.",
        [
            Slot(
                f"compression-{ds}",
                "compression",
                f"compression-{ds}",
                f"Compression ({ds})",
                f"python benchmarks/compression.py --datasets {ds} --data-dir ../shared/datasets --reuse",
            )
            for ds in ("fashion-mnist", "cifar10")
        ],  # fmt: skip
    ),
    (
        "Continual learning",
        "`benchmarks/continual.py`: Split datasets, tasks of two classes in class order; every method runs "
        "through the library (`paraformer continual`): ParaFormer expansion (exemplar-free and "
        "with 200 images, "
        "and its ablation) against fine-tuning, LwF, experience replay, DER++ and joint training.",
        [
            Slot(
                f"continual-{ds}",
                "continual",
                f"continual-{ds}",
                f"Continual learning ({ds})",
                f"python benchmarks/continual.py --datasets {ds} --data-dir ../shared/datasets --reuse",
            )
            for ds in ("fashion-mnist", "cifar10")
        ],  # fmt: skip
    ),
    (
        "Language models",
        "`benchmarks/lm.py` trains uniform, tapered (CascadeFormer), widening and ParaFormer-LM models of "
        "equal size on the same tokens and analyses their gradient fan-in; `benchmarks/prune.py` removes "
        "layers from the uniform runs by CascadeFlow and by the heuristics.",
        [
            Slot(
                "lm-compare",
                "lm-compare",
                "lm",
                "Language models",
                "python benchmarks/lm.py --data ../shared/datasets/text/tinyshakespeare.txt --reuse",
            ),
            Slot(
                "lm-gfa",
                "lm-gfa",
                "lm",
                "Gradient fan-in",
                "python benchmarks/lm.py --data ../shared/datasets/text/tinyshakespeare.txt --reuse",
            ),
            Slot(
                "lm-prune", "prune", "prune-lm_uniform_small", "Pruning", "python benchmarks/prune.py --reuse"
            ),
        ],  # fmt: skip
    ),
    (
        "Tapers that cut cost, pruning at depth, gradient fan-in at depth",
        "`benchmarks/taper.py` trains tapers with fewer FLOPs per token than the uniform model (FFN only, "
        "heads and FFN, the residual width), their widening mirrors and a uniform model narrowed to the same "
        "FLOPs, at equal tokens and equal time, and times the trained models; `benchmarks/prune_depth.py` "
        "prunes 16-layer models on two texts, sub-layer CascadeFlow included; `benchmarks/gfa_depth.py` "
        "measures gradient fan-in at 16 and 24 layers with gradient equalisation and shared repetition.",
        [
            Slot(
                "taper",
                "taper",
                "taper",
                "Tapers that cut cost",
                "python benchmarks/taper.py --seeds 0 1 2 3 4 --reuse --threads 1",
            ),
            *(
                Slot(
                    f"prune-l16-{t}",
                    "prune-depth",
                    f"prune-l16-{t}",
                    f"Pruning 16 layers ({t})",
                    f"python benchmarks/prune_depth.py --texts {t} --seeds 0 1 2 3 4 --reuse --threads 1",
                )
                for t in ("tinyshakespeare", "python-docs-topics")
            ),
            Slot(
                "gfa-depth",
                "gfa-depth",
                "gfa-depth",
                "Gradient fan-in at depth",
                "python benchmarks/gfa_depth.py --reuse --threads 1",
            ),
        ],  # fmt: skip
    ),
]
GPU_SH = "benchmarks/gpu.sh (on one NVIDIA H100 or H200)"
CHAPTERS.append(
    (
        "On a GPU",
        "`benchmarks/gpu.sh` runs every GPU row in about 10 minutes on one H100 or H200: inference latency "
        "of every path against the ViT twin at batch 1 and 256, training throughput in bf16 and under "
        "torch.compile, and the paper recipe at equal wall-clock. `benchmarks/gpu.sh --dry-run` runs the "
        "same steps, tiny, on a CPU.",
        [
            Slot("latency-gpu", "latency", "latency-gpu", "Inference latency (GPU)", GPU_SH),
            Slot(
                "throughput-gpu-bf16", "throughput", "throughput-gpu-bf16", "Throughput, bf16 (GPU)", GPU_SH
            ),
            Slot(
                "throughput-gpu-compile",
                "throughput",
                "throughput-gpu-compile",
                "Throughput, torch.compile (GPU)",
                GPU_SH,
            ),
            Slot(
                "gpu-recipe", "gpu-recipe", "gpu-recipe", "The paper recipe at equal wall-clock (GPU)", GPU_SH
            ),
        ],
    )
)
SLOTS = [slot for _, _, slots in CHAPTERS for slot in slots]


def load_all(results: Path) -> dict[str, dict[str, Any] | None]:
    """Every raw file a section or a claim reads, by name (None where it does not exist)."""
    from benchmarks.claims import CLAIMS

    names = {s.source for s in SLOTS} | {c.source for c in CLAIMS}
    return {name: load_results(name, results) for name in sorted(names)}


def render_sections(records: dict[str, dict[str, Any] | None]) -> dict[str, Section]:
    out = {}
    for slot in SLOTS:
        record = records.get(slot.source)
        if record is None:
            text = f"### {slot.title}\n\nNot yet run (no raw results file): `{slot.command}`"
            out[slot.tag] = Section(slot.tag, text)
        else:
            out[slot.tag] = REGISTRY[slot.kind](record)
    return out


def _summary(sections: dict[str, Section]) -> list[str]:
    rows = []
    for tag, section in sections.items():
        if not section.comparisons:
            continue
        verdicts = [c.result.verdict for c in section.comparisons]
        rows.append(
            [
                f"[{tag}](#{tag})",
                len(verdicts),
                verdicts.count(WIN),
                verdicts.count(LOSS),
                verdicts.count(TIE),
                len(verdicts) - verdicts.count(WIN) - verdicts.count(LOSS) - verdicts.count(TIE),
                min(c.result.n for c in section.comparisons),
            ]
        )
    missing = [
        f"[{tag}](#{tag})" for tag, s in sections.items() if not s.comparisons and "Not yet run" in s.text
    ]
    header = ["section", "comparisons", "wins", "losses", "ties", "no verdict (n<2)", "fewest paired n"]
    lines = table(header, rows)
    if missing:
        lines += ["", "Not yet run (no raw results file): " + ", ".join(missing) + "."]
    return lines


def render_benchmarks(records: dict[str, dict[str, Any] | None]) -> tuple[str, dict[str, Section]]:
    sections = render_sections(records)
    gpu = any(r and "GPU" in (r.get("machine") or "") for r in records.values())
    lines = [
        "# Benchmarks",
        "",
        "<!-- Rendered by `python -m benchmarks.report` from the raw results in benchmarks/results/; do not "
        "edit by hand: `python -m benchmarks.report --check` fails when this file differs from them. -->",
        "",
        "Every table here is rendered from a raw results file in `benchmarks/results/`; each section names "
        "the command that wrote it, the machine, its load, the date and the commit. Spread is mean ± sample "
        "standard deviation with n; comparisons are paired by seed (speeds: by round) with a 95% t-interval, "
        "and a difference counts as a win or a loss only when the interval excludes 0. Every comparison "
        "made is listed, so that the reader can discount multiple comparisons. Speeds compare as ratios of "
        "variants that took turns in one run; absolute times on a shared machine are noise. The protocol is "
        "in [docs/protocol.md](docs/protocol.md); the papers' claims are weighed in "
        "[REPRODUCTION.md](REPRODUCTION.md).",
        "",
        "No raw file here was written on a machine with a GPU."
        if not gpu
        else "Some raw files come from GPUs.",
        "",
        "## Summary: the comparisons of each section",
        "",
        *_summary(sections),
    ]
    for title, intro, slots in CHAPTERS:
        lines += ["", f"## {title}", "", intro]
        for slot in slots:
            begin, anchor = f"<!-- {slot.tag}:begin -->", f'<a id="{slot.tag}"></a>'
            lines += ["", begin, anchor, "", sections[slot.tag].text, "", f"<!-- {slot.tag}:end -->"]
    return "\n".join(lines) + "\n", sections


README_BLOCK = "benchmark-summary"


def with_summary(readme: str, lines: list[str]) -> str:
    """The README with its marked benchmark-summary block rendered (the rest is hand-written)."""
    begin, end = f"<!-- {README_BLOCK}:begin -->", f"<!-- {README_BLOCK}:end -->"
    if begin not in readme or end not in readme:
        raise SystemExit(f"README.md has no {begin} ... {end} block to render the benchmark summary into.")
    head, rest = readme.split(begin, 1)
    _, tail = rest.split(end, 1)
    block = "\n".join(
        [
            "<!-- Rendered by `python -m benchmarks.report` from benchmarks/results/ (the claims of "
            "REPRODUCTION.md); do not edit by hand. -->",
            "",
            *lines,
            "",
        ]
    )
    return f"{head}{begin}\n{block}{end}{tail}"


def render_all(results: Path = RESULTS, out_dir: Path = ROOT) -> tuple[dict[str, str], dict[str, Section]]:
    """{file name: text} for BENCHMARKS.md, REPRODUCTION.md and README.md (its summary block only),
    and the sections (with their plots)."""
    records = load_all(results)
    benchmarks, sections = render_benchmarks(records)
    texts = {"BENCHMARKS.md": benchmarks, "REPRODUCTION.md": render_reproduction(records)}
    readme = out_dir / "README.md"
    if readme.is_file():
        texts["README.md"] = with_summary(readme.read_text(), takeaway(records))
    return texts, sections


def _parts(text: str) -> dict[str, str]:
    """The text of each marked section, and of everything outside them (key '(outside the sections)')."""
    parts = dict(re.findall(r"<!-- ([\w-]+):begin -->\n(.*?)<!-- \1:end -->", text, flags=re.S))
    parts["(outside the sections)"] = re.sub(
        r"<!-- ([\w-]+):begin -->.*?<!-- \1:end -->", "", text, flags=re.S
    )
    return parts


def differences(name: str, committed: str, rendered: str, context: int = 30) -> list[str]:
    """Which sections of ``name`` differ, each with the start of a unified diff."""
    if committed == rendered:
        return []
    old, new = _parts(committed), _parts(rendered)
    out = []
    for part in sorted(old.keys() | new.keys()):
        if old.get(part) == new.get(part):
            continue
        diff = list(
            difflib.unified_diff(
                (old.get(part) or "").splitlines(),
                (new.get(part) or "").splitlines(),
                f"{name} (committed)",
                f"{name} (rendered)",
                lineterm="",
                n=1,
            )
        )
        shown = diff[:context] + (
            [f"... {len(diff) - context} more diff lines"] if len(diff) > context else []
        )
        out += [f"{name}: section {part} differs", *shown]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="compare, write nothing; exit 1 on a difference")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the raw results folder")
    parser.add_argument(
        "--out-dir", type=Path, default=ROOT, help="where BENCHMARKS.md and REPRODUCTION.md are"
    )
    parser.add_argument("--no-plots", action="store_true", help="write the .md files only")
    args = parser.parse_args(argv)
    texts, sections = render_all(args.results, args.out_dir)
    if args.check:
        problems = []
        for name, text in texts.items():
            path = args.out_dir / name
            if not path.is_file():
                problems.append(f"{name}: missing (run python -m benchmarks.report)")
                continue
            problems += differences(name, path.read_text(), text)
        if problems:
            print("\n".join(problems))
            print("Run `python -m benchmarks.report` to render the files from benchmarks/results/.")
            return 1
        print(f"{', '.join(texts)} match the raw results.")
        return 0
    for name, text in texts.items():
        (args.out_dir / name).write_text(text)
        print(f"wrote {args.out_dir / name}")
    if not args.no_plots:
        for section in sections.values():
            for file_name, draw in section.plots:
                draw(args.results / file_name)
                print(f"drew {args.results / file_name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
