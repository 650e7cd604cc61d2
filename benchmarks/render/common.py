"""What every rendered section shares: its provenance lines, tables, and the comparisons it makes."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.protocol import MIN_SEEDS, Comparison, few_seeds

PlotFn = Callable[[Path], None]


@dataclass(frozen=True)
class Compared:
    """One comparison a section makes, as it is printed (for the section and the summary)."""

    label: str
    result: Comparison
    unit: str = "points"
    digits: int = 2
    scale: float = 1.0
    paired_by: str = "seeds"  # or "rounds", for speeds measured in turns

    def figure(self) -> str:
        if self.result.log:
            return self.result.ratio(self.digits)
        return self.result.difference(self.digits, self.unit, self.scale)


@dataclass
class Section:
    """A rendered section: markdown text, the comparisons it made, the plots it draws."""

    tag: str
    text: str
    comparisons: list[Compared] = field(default_factory=list)
    plots: list[tuple[str, PlotFn]] = field(default_factory=list)  # (file name in results/, draw)


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def provenance(record: dict[str, Any]) -> list[str]:
    """The command, and where, when, at which commit and under which load the raw file was written."""
    load = record.get("load_average")
    load_text = f"load average {load[0]:.1f}" if load and load[0] is not None else "load not recorded"
    commit, dirty = record.get("git_commit"), record.get("git_dirty")
    if commit:
        commit_text = f"commit {commit[:10]}" + (" (with uncommitted changes)" if dirty else "")
    else:
        committed = (record.get("migrated") or {}).get("committed_in") or []
        commit_text = "commit not recorded" + (
            f" (the raw file was committed in {', '.join(c[:10] for c in committed)})" if committed else ""
        )
    seeds = record.get("seeds") or []
    machine = re.sub(r", load average [\d.]+", "", record.get("machine") or "machine not recorded")
    versions = [f"torch {record['torch']}" if record.get("torch") and "torch" not in machine else ""]
    versions.append(f"python {record['python']}" if record.get("python") else "")
    lines = [
        f"`{record.get('command')}`",
        "",
        f"Raw results `benchmarks/results/{record.get('benchmark')}.json`, written {record.get('time_utc')} "
        f"on {machine}{''.join(', ' + v for v in versions if v)}; {load_text}; {commit_text}"
        + (f"; seeds {', '.join(map(str, seeds))} (n={len(seeds)})." if seeds else "."),
    ]
    migrated = record.get("migrated")
    if migrated:
        lines += ["", f"Provenance: {migrated['note']}."]
    return lines


def comparison_lines(compared: Sequence[Compared], title: str) -> list[str]:
    """A table of comparisons (a - b, 95% interval, verdict), marked when any has < 5 paired seeds."""
    if not compared:
        return []
    rows = []
    for c in compared:
        mark = few_seeds(c.result.n, c.paired_by)
        rows.append(
            [c.label, c.result.n, c.figure(), f"**{c.result.verdict}**" + (f" ({mark})" if mark else "")]
        )
    smallest = min(compared, key=lambda c: c.result.n)
    lines = [title, ""]
    if smallest.result.n < MIN_SEEDS:
        unit = smallest.paired_by
        lines += [
            f"Fewer than {MIN_SEEDS} paired {unit}: {few_seeds(smallest.result.n, unit)} at the least.",
            "",
        ]
    header = ["comparison (first vs second)", "paired n", "difference, or ratio [95% interval]", "verdict"]
    return lines + table(header, rows)


def not_rerun(command: str, what: str) -> str:
    """The text of a section whose raw results have not been recorded yet."""
    return f"{what}: not yet rerun with raw results: `{command}`"


def seeds_of(record: dict[str, Any]) -> list[str]:
    return [str(s) for s in record.get("seeds") or []]
